package targettest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/virtkeep/virtkeep/target"
)

// Run runs the suite. open returns a new, empty backend for each subtest.
func Run(t *testing.T, open func(t *testing.T) target.Backend) {
	tests := []struct {
		name string
		fn   func(t *testing.T, b target.Backend)
	}{
		{"PutGetStat", testPutGetStat},
		{"RangeGet", testRangeGet},
		{"NotFound", testNotFound},
		{"BadKeys", testBadKeys},
		{"Overwrite", testOverwrite},
		{"List", testList},
		{"ListAfter", testListAfter},
		{"Delete", testDelete},
		{"ConcurrentWriters", testConcurrentWriters},
		{"SameKeyRace", testSameKeyRace},
		{"EmptyAndLarge", testEmptyAndLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := open(t)
			t.Cleanup(func() { b.Close() })
			tc.fn(t, b)
		})
	}
}

func random(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func mustPut(t *testing.T, b target.Backend, key string, data []byte) {
	t.Helper()
	if err := b.Put(context.Background(), key, data); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

func mustGet(t *testing.T, b target.Backend, key string, off, n int64) []byte {
	t.Helper()
	d, err := b.Get(context.Background(), key, off, n)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	return d
}

func testPutGetStat(t *testing.T, b target.Backend) {
	data := random(100000)
	mustPut(t, b, "chunks/ab/abcdef", data)
	if got := mustGet(t, b, "chunks/ab/abcdef", 0, -1); !bytes.Equal(got, data) {
		t.Fatal("get returned different data")
	}
	fi, err := b.Stat(context.Background(), "chunks/ab/abcdef")
	if err != nil || fi.Size != int64(len(data)) || fi.Key != "chunks/ab/abcdef" || fi.ModTime.IsZero() {
		t.Fatalf("stat %+v, %v", fi, err)
	}
	if err := b.Sync(context.Background()); err != nil {
		t.Fatalf("sync: %v", err)
	}
	if b.Properties().Name == "" {
		t.Error("backend has no name")
	}
}

func testRangeGet(t *testing.T, b target.Backend) {
	data := random(5000)
	mustPut(t, b, "index/x", data)
	for _, r := range []struct{ off, n int64 }{{0, 10}, {100, 1000}, {4990, 10}, {4990, 100}, {0, 5000}, {1234, -1}, {5000, 10}} {
		want := data[min(r.off, 5000):]
		if r.n >= 0 {
			want = want[:min(r.n, int64(len(want)))]
		}
		if got := mustGet(t, b, "index/x", r.off, r.n); !bytes.Equal(got, want) {
			t.Fatalf("range %+v: got %d bytes, want %d", r, len(got), len(want))
		}
	}
}

func testNotFound(t *testing.T, b target.Backend) {
	ctx := context.Background()
	if _, err := b.Get(ctx, "points/nope", 0, -1); !errors.Is(err, target.ErrNotFound) {
		t.Errorf("get missing: %v", err)
	}
	if _, err := b.Stat(ctx, "points/nope"); !errors.Is(err, target.ErrNotFound) {
		t.Errorf("stat missing: %v", err)
	}
	if err := b.Delete(ctx, "points/nope"); err != nil {
		t.Errorf("delete missing: %v", err)
	}
	n := 0
	if err := b.List(ctx, "nothing/", func(target.ObjectInfo) error { n++; return nil }); err != nil || n != 0 {
		t.Errorf("list of nothing: %d, %v", n, err)
	}
}

func testBadKeys(t *testing.T, b target.Backend) {
	ctx := context.Background()
	for _, k := range []string{"", "/abs", "a//b", "../escape", "a/../../b", "a/./b", "trailing/", "sp ace", "a\x00b"} {
		if err := b.Put(ctx, k, []byte("x")); !errors.Is(err, target.ErrBadKey) {
			t.Errorf("put %q: %v", k, err)
		}
		if _, err := b.Get(ctx, k, 0, -1); !errors.Is(err, target.ErrBadKey) {
			t.Errorf("get %q: %v", k, err)
		}
	}
}

func testOverwrite(t *testing.T, b target.Backend) {
	mustPut(t, b, "locks/l", []byte("one"))
	mustPut(t, b, "locks/l", []byte("second"))
	if got := mustGet(t, b, "locks/l", 0, -1); string(got) != "second" {
		t.Fatalf("after overwrite: %q", got)
	}
}

func listKeys(t *testing.T, b target.Backend, prefix string) []string {
	t.Helper()
	var keys []string
	err := b.List(context.Background(), prefix, func(fi target.ObjectInfo) error {
		keys = append(keys, fi.Key)
		return nil
	})
	if err != nil {
		t.Fatalf("list %q: %v", prefix, err)
	}
	sort.Strings(keys)
	return keys
}

func testList(t *testing.T, b target.Backend) {
	for _, k := range []string{"chunks/00/0011", "chunks/00/0022", "chunks/ff/ff33", "points/p1", "points/p2", "config"} {
		mustPut(t, b, k, []byte(k))
	}
	cases := map[string]string{
		"chunks/":    "chunks/00/0011 chunks/00/0022 chunks/ff/ff33",
		"chunks/00/": "chunks/00/0011 chunks/00/0022",
		"points/":    "points/p1 points/p2",
		"points/p2":  "points/p2",
		"":           "chunks/00/0011 chunks/00/0022 chunks/ff/ff33 config points/p1 points/p2",
	}
	for prefix, want := range cases {
		if got := fmt.Sprint(listKeys(t, b, prefix)); got != "["+want+"]" {
			t.Errorf("list %q: %s, want [%s]", prefix, got, want)
		}
	}
	stop := errors.New("stop")
	if err := b.List(context.Background(), "", func(target.ObjectInfo) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("callback error lost: %v", err)
	}
	var sizes int64
	_ = b.List(context.Background(), "points/", func(fi target.ObjectInfo) error { sizes += fi.Size; return nil })
	if sizes != int64(len("points/p1")+len("points/p2")) {
		t.Errorf("listed sizes %d", sizes)
	}
}

// testListAfter: target.ListAfter gives the keys after the one named,
// whether the backend skips the others on its server or not.
func testListAfter(t *testing.T, b target.Backend) {
	for _, k := range []string{"points/20261201T000000Z-aa", "points/20261202T000000Z-bb", "points/20261203T000000Z-cc", "pointz", "config"} {
		mustPut(t, b, k, []byte(k))
	}
	cases := map[string]string{
		"":                    "points/20261201T000000Z-aa points/20261202T000000Z-bb points/20261203T000000Z-cc",
		"20261202T000000Z":    "points/20261202T000000Z-bb points/20261203T000000Z-cc",
		"20261202T000000Z-bb": "points/20261203T000000Z-cc",
		"2027":                "",
	}
	for after, want := range cases {
		var keys []string
		err := target.ListAfter(context.Background(), b, "points/", after, func(fi target.ObjectInfo) error {
			keys = append(keys, fi.Key)
			return nil
		})
		sort.Strings(keys)
		if err != nil || strings.Join(keys, " ") != want {
			t.Errorf("list points/ after %q: %v %v, want [%s]", after, keys, err, want)
		}
	}
}

func testDelete(t *testing.T, b target.Backend) {
	mustPut(t, b, "journal/a", []byte("a"))
	mustPut(t, b, "journal/b", []byte("b"))
	if err := b.Delete(context.Background(), "journal/a"); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(listKeys(t, b, "journal/")); got != "[journal/b]" {
		t.Fatalf("after delete: %s", got)
	}
}

// testConcurrentWriters: many goroutines put distinct keys in the same
// directories at once, as two hosts backing up into one repository do.
func testConcurrentWriters(t *testing.T, b target.Backend) {
	const writers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				k := fmt.Sprintf("chunks/%02x/w%d-%d", i%4, w, i)
				if err := b.Put(context.Background(), k, []byte(k)); err != nil {
					errs <- err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	keys := listKeys(t, b, "chunks/")
	if len(keys) != writers*each {
		t.Fatalf("%d objects, want %d", len(keys), writers*each)
	}
	for _, k := range keys {
		if got := mustGet(t, b, k, 0, -1); string(got) != k {
			t.Fatalf("%s holds %q", k, got)
		}
	}
}

// testSameKeyRace: writers replace one key while readers read it; a reader
// sees one whole version, never a mix or a part.
func testSameKeyRace(t *testing.T, b target.Backend) {
	versions := [][]byte{bytes.Repeat([]byte{1}, 200000), bytes.Repeat([]byte{2}, 150000), bytes.Repeat([]byte{3}, 250000)}
	mustPut(t, b, "index/race", versions[0])
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				if err := b.Put(ctx, "index/race", versions[(w+i)%3]); err != nil {
					errs <- err
					return
				}
			}
		}(w)
	}
	for r := 0; r < 3; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				d, err := b.Get(ctx, "index/race", 0, -1)
				if err != nil {
					errs <- err
					return
				}
				ok := false
				for _, v := range versions {
					ok = ok || bytes.Equal(d, v)
				}
				if !ok {
					errs <- fmt.Errorf("read a torn object of %d bytes", len(d))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func testEmptyAndLarge(t *testing.T, b target.Backend) {
	mustPut(t, b, "blob/empty", nil)
	if got := mustGet(t, b, "blob/empty", 0, -1); len(got) != 0 {
		t.Fatalf("empty object read back as %d bytes", len(got))
	}
	big := random(8 << 20)
	mustPut(t, b, "blob/big", big)
	if got := mustGet(t, b, "blob/big", 3<<20, 1<<20); !bytes.Equal(got, big[3<<20:4<<20]) {
		t.Fatal("range of a large object differs")
	}
}
