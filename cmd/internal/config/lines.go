package config

import (
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// lineIndex finds the line of a key such as policies[1].schedule[0] in the
// file, or of the nearest enclosing key the file has.
type lineIndex struct{ root *yaml.Node }

func newLineIndex(b []byte) *lineIndex {
	var doc yaml.Node
	if yaml.Unmarshal(b, &doc) != nil || len(doc.Content) == 0 {
		return &lineIndex{}
	}
	return &lineIndex{root: doc.Content[0]}
}

func (l *lineIndex) line(key string) int {
	if l == nil || l.root == nil {
		return 0
	}
	n, best := l.root, 0
	for _, part := range splitKey(key) {
		var line int
		if n, line = child(n, part); n == nil {
			break
		}
		best = line
	}
	return best
}

// splitKey turns a.b[2].c into a, b, 2, c.
func splitKey(key string) []string {
	return strings.FieldsFunc(key, func(r rune) bool { return r == '.' || r == '[' || r == ']' })
}

// child is n's value under part, and the line that names it.
func child(n *yaml.Node, part string) (*yaml.Node, int) {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == part {
				return n.Content[i+1], n.Content[i].Line
			}
		}
	case yaml.SequenceNode:
		if i, err := strconv.Atoi(part); err == nil && i >= 0 && i < len(n.Content) {
			return n.Content[i], n.Content[i].Line
		}
	}
	return nil, 0
}
