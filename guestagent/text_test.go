package guestagent

import (
	"encoding/base64"
	"strings"
	"testing"
)

// TestGuestText: a hook's output is the guest's choice of bytes: escape
// sequences and other control characters never reach a terminal or a
// mail, and 12 MiB of it become MaxOutput bytes and a note.
func TestGuestText(t *testing.T) {
	enc := base64.StdEncoding.EncodeToString
	got := guestText(enc([]byte("ok\tline\n\x1b]0;owned\x07\x1b[2J\r\x00\xff done")))
	if strings.ContainsAny(got, "\x1b\x07\r\x00") || !strings.HasPrefix(got, "ok\tline\n") || !strings.HasSuffix(got, " done") {
		t.Errorf("control characters kept: %q", got)
	}
	big := strings.Repeat("y\n", 6<<20)
	got = guestText(enc([]byte(big)))
	if len(got) > MaxOutput+64 || !strings.HasSuffix(got, " [12566528 more bytes not kept]") {
		t.Errorf("12 MiB of output kept as %d bytes ending %q", len(got), got[max(0, len(got)-40):])
	}
	for _, n := range []int{0, 1, 2, 3, MaxOutput - 1, MaxOutput, MaxOutput + 1, MaxOutput + 2} {
		s := strings.Repeat("a", n)
		got := guestText(enc([]byte(s)))
		want := s
		if n > MaxOutput {
			want = s[:MaxOutput] + " [" + map[int]string{1: "1", 2: "2"}[n-MaxOutput] + " more bytes not kept]"
		}
		if got != want {
			t.Errorf("%d bytes: got %d bytes %q…", n, len(got), got[max(0, len(got)-30):])
		}
	}
}
