package layout

import (
	"fmt"
	"strconv"
)

// section is a block of LVM2's text metadata: `key = value` settings and
// `name { ... }` subsections.
type section struct {
	values   map[string]any // string, int64 or []any
	sections map[string]*section
	order    []string // subsection names in file order
}

func (s *section) str(k string) (string, bool) { v, ok := s.values[k].(string); return v, ok }
func (s *section) num(k string) (int64, bool)  { v, ok := s.values[k].(int64); return v, ok }
func (s *section) list(k string) []any         { v, _ := s.values[k].([]any); return v }

// has reports whether the list k holds the string v.
func (s *section) has(k, v string) bool {
	for _, x := range s.list(k) {
		if x == v {
			return true
		}
	}
	return false
}

const maxDepth = 16

// parseConfig parses LVM2's text metadata format.
func parseConfig(text []byte) (*section, error) {
	p := &cfgParser{b: text}
	top, err := p.block(0)
	if err != nil {
		return nil, err
	}
	if p.peek() != 0 {
		return nil, p.errf("unexpected %q", p.peek())
	}
	return top, nil
}

type cfgParser struct {
	b   []byte
	pos int
}

func (p *cfgParser) errf(format string, args ...any) error {
	return fmt.Errorf("offset %d: %s: %w", p.pos, fmt.Sprintf(format, args...), ErrBadLVM)
}

// peek skips blanks and comments and returns the next byte (0 at the end).
func (p *cfgParser) peek() byte {
	for p.pos < len(p.b) {
		c := p.b[p.pos]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			p.pos++
		case c == '#':
			for p.pos < len(p.b) && p.b[p.pos] != '\n' {
				p.pos++
			}
		default:
			return c
		}
	}
	return 0
}

func isWord(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '+' || c == '-'
}

func (p *cfgParser) word() (string, error) {
	p.peek()
	start := p.pos
	for p.pos < len(p.b) && isWord(p.b[p.pos]) {
		p.pos++
	}
	if p.pos == start {
		return "", p.errf("expected a name")
	}
	return string(p.b[start:p.pos]), nil
}

// block parses settings and subsections until '}' or the end.
func (p *cfgParser) block(depth int) (*section, error) {
	if depth > maxDepth {
		return nil, p.errf("nested too deep")
	}
	s := &section{values: map[string]any{}, sections: map[string]*section{}}
	for {
		c := p.peek()
		if c == 0 || c == '}' {
			return s, nil
		}
		name, err := p.word()
		if err != nil {
			return nil, err
		}
		switch p.peek() {
		case '{':
			p.pos++
			sub, err := p.block(depth + 1)
			if err != nil {
				return nil, err
			}
			if p.peek() != '}' {
				return nil, p.errf("section %s is not closed", name)
			}
			p.pos++
			if _, dup := s.sections[name]; !dup {
				s.order = append(s.order, name)
			}
			s.sections[name] = sub
		case '=':
			p.pos++
			v, err := p.value(depth)
			if err != nil {
				return nil, err
			}
			s.values[name] = v
		default:
			return nil, p.errf("expected = or { after %s", name)
		}
	}
}

func (p *cfgParser) value(depth int) (any, error) {
	switch c := p.peek(); {
	case c == '"':
		return p.str()
	case c == '[':
		if depth > maxDepth {
			return nil, p.errf("nested too deep")
		}
		p.pos++
		var list []any
		for {
			if p.peek() == ']' {
				p.pos++
				return list, nil
			}
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			list = append(list, v)
			switch p.peek() {
			case ',':
				p.pos++
			case ']':
			default:
				return nil, p.errf("expected , or ] in a list")
			}
		}
	default:
		w, err := p.word()
		if err != nil {
			return nil, err
		}
		if n, err := strconv.ParseInt(w, 10, 64); err == nil {
			return n, nil
		}
		if f, err := strconv.ParseFloat(w, 64); err == nil {
			return f, nil
		}
		return nil, p.errf("value %q is neither a number nor a string", w)
	}
}

func (p *cfgParser) str() (string, error) {
	p.pos++ // opening quote
	var out []byte
	for p.pos < len(p.b) {
		c := p.b[p.pos]
		p.pos++
		switch c {
		case '"':
			return string(out), nil
		case '\\':
			if p.pos < len(p.b) {
				out = append(out, p.b[p.pos])
				p.pos++
			}
		default:
			out = append(out, c)
		}
	}
	return "", p.errf("string is not closed")
}
