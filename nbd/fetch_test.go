package nbd_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/virtkeep/virtkeep/nbd"
	"github.com/virtkeep/virtkeep/testenv"
)

func TestFetchAndPool(t *testing.T) {
	content, _ := testenv.NewContent(48<<20, 9, testenv.Fill{})
	sock := startServer(t, &nbd.Server{Exports: []nbd.Export{{Name: "d", Source: contentSource{content}}}})
	ctx := context.Background()
	p, err := nbd.DialPool(ctx, 3, "unix", sock, nbd.Options{Export: "d", MetaContexts: []string{nbd.ContextBaseAllocation}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.Conns() != 3 {
		t.Fatalf("%d connections", p.Conns())
	}
	var data []nbd.Extent
	for _, e := range wantAllocation(content) {
		if e.Flags&nbd.StateZero == 0 {
			data = append(data, e)
		}
	}
	want := make([]byte, content.Size())
	_, _ = content.ReadAt(want, 0)
	for _, o := range []nbd.FetchOptions{{}, {PieceSize: 100000, InFlight: 3}, {PieceSize: 1 << 20, InFlight: 1}} {
		var got []nbd.Extent
		var total int64
		err := nbd.Fetch(ctx, p, data, o, func(off int64, b []byte) error {
			if !bytes.Equal(b, want[off:off+int64(len(b))]) {
				t.Fatalf("%+v: data at %d differs", o, off)
			}
			got = appendMerged(got, nbd.Extent{Off: off, Len: int64(len(b))})
			total += int64(len(b))
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if !equalExtents(got, data) {
			t.Fatalf("%+v: pieces out of order or missing", o)
		}
	}
	stop := errors.New("stop")
	n := 0
	err = nbd.Fetch(ctx, p, data, nbd.FetchOptions{PieceSize: 65536, InFlight: 8}, func(int64, []byte) error {
		if n++; n == 5 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) {
		t.Fatalf("fetch error: %v", err)
	}
	err = nbd.Fetch(ctx, p, []nbd.Extent{{Off: content.Size() - 10, Len: 20}}, nbd.FetchOptions{}, func(int64, []byte) error { return nil })
	if err == nil {
		t.Fatal("range past the end fetched")
	}
}
