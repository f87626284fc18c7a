package target

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func testCodec(t testing.TB, enc bool) *codec {
	var sk *subkeys
	if enc {
		k := Key{}
		for i := range k.b {
			k.b[i] = byte(i)
		}
		sk, _ = k.derive("0123456789abcdef0123456789abcdef")
	}
	c, err := newCodec(true, DefaultChunkSize, sk)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// FuzzEnvelope: arbitrary bytes as a stored object of every type, with and
// without encryption. Open must fail cleanly or return exactly the declared
// plaintext; it must never panic or allocate without bound.
func FuzzEnvelope(f *testing.F) {
	for _, enc := range []bool{false, true} {
		c := testCodec(f, enc)
		f.Add(c.seal(typeChunk, []byte("hello hello hello hello hello hello hello hello hello hello hello hello hello")))
		f.Add(c.seal(typePage, make([]byte, 64)))
		f.Add(c.seal(typeManifst, []byte(`{"version":1}`)))
	}
	f.Add([]byte("VKO1\x01\x01\x00\x00\xff\xff\xff\xff"))
	plain, enc := testCodec(f, false), testCodec(f, true)
	f.Fuzz(func(t *testing.T, obj []byte) {
		for _, c := range []*codec{plain, enc} {
			for typ := byte(1); typ <= typeMerged; typ++ {
				p, err := c.open(typ, obj)
				if err == nil && len(p) > maxPlain(typ, DefaultChunkSize) {
					t.Fatalf("type %d: %d bytes of plaintext accepted", typ, len(p))
				}
			}
		}
	})
}

// FuzzIndex: arbitrary bytes as an index root and an index page.
func FuzzIndex(f *testing.F) {
	rt := &root{size: 5 << 20, chunkSize: DefaultChunkSize, pages: make([]ID, 1)}
	f.Add(rt.encode())
	f.Add(encodePage(make([]ID, 20)))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := decodeRoot(b, DefaultChunkSize); err == nil {
			if int64(len(r.pages)) != numPages(r.chunks()) {
				t.Fatalf("root with %d pages for %d chunks", len(r.pages), r.chunks())
			}
			if got := r.encode(); string(got) != string(b) {
				t.Fatal("root does not round-trip")
			}
		}
		if len(b)%32 == 0 {
			if ids, err := decodePage(b, len(b)/32); err != nil || len(ids) != len(b)/32 {
				t.Fatalf("page of %d bytes: %v", len(b), err)
			}
		}
		if _, err := decodePage(b, 7); err == nil && len(b) != 7*32 {
			t.Fatal("page of the wrong length accepted")
		}
	})
}

// FuzzManifest: arbitrary JSON as a manifest, config and key file.
func FuzzManifest(f *testing.F) {
	m := Manifest{Version: 1, ID: NewPointID(time.Unix(1e9, 0)), Domain: "d", Time: time.Unix(1e9, 0).UTC(), Level: LevelFull,
		Disks: []DiskManifest{{Name: "vda", VirtualSize: 1, Root: ZeroID.String()}}}
	b, _ := json.Marshal(m)
	f.Add(b)
	f.Add([]byte(`{"version":1,"id":"x"}`))
	f.Add([]byte(`{"version":1,"id":"0123456789abcdef0123456789abcdef","chunk_size":262144,"page_entries":1024,"compression":"zstd","encryption":null}`))
	f.Add([]byte(`{"version":1,"kdf":"argon2id","salt":"AAAAAAAAAAA=","time":1,"memory_kib":8,"threads":1,"wrapped":"AAAA"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, err := ParseManifest(b); err == nil {
			if m.Version != 1 || checkPointID(m.ID) != nil {
				t.Fatalf("accepted %+v", m)
			}
			for _, d := range m.Disks {
				if _, err := ParseID(d.Root); err != nil {
					t.Fatal("accepted a bad root id")
				}
			}
		}
		if c, err := parseConfig(b); err == nil && (c.ChunkSize < 64<<10 || c.ChunkSize&(c.ChunkSize-1) != 0) {
			t.Fatalf("accepted chunk size %d", c.ChunkSize)
		}
		// Key files with cheap parameters only: the KDF cost is bounded by
		// the parser, but fuzzing it at full cost would be slow.
		var kf keyFile
		if json.Unmarshal(b, &kf) == nil && kf.KDF == "argon2id" && (kf.MemoryKiB > 1024 || kf.Time > 2) {
			return
		}
		_, _ = parseKeyFile("fuzz", b, []byte("pass"))
	})
}

func TestNoneCompressionSqueezesZeroTails(t *testing.T) {
	c, err := newCodec(false, DefaultChunkSize, nil)
	if err != nil {
		t.Fatal(err)
	}
	random := make([]byte, DefaultChunkSize)
	for i := range random {
		random[i] = byte(i*7919 + i>>8*31)
	}
	half := append([]byte(nil), random...)
	clear(half[DefaultChunkSize/2:])
	text := []byte(strings.Repeat("compressible text, but compression is off. ", DefaultChunkSize/44+1))[:DefaultChunkSize]
	for _, tc := range []struct {
		name  string
		plain []byte
		zstd  bool
	}{{"random", random, false}, {"half zero", half, true}, {"text", text, false}} {
		obj := c.seal(typeChunk, tc.plain)
		if got := obj[5]&flagZstd != 0; got != tc.zstd {
			t.Errorf("%s: compressed=%v, want %v", tc.name, got, tc.zstd)
		}
		back, err := c.open(typeChunk, obj)
		if err != nil || string(back) != string(tc.plain) {
			t.Fatalf("%s: round trip: %v", tc.name, err)
		}
	}
}

// FuzzPackIndex: any bytes decode to entries that lie inside the pack and
// re-encode to the same bytes, or are refused as damaged; never a panic.
func FuzzPackIndex(f *testing.F) {
	pack := ID{1, 2, 3}
	f.Add(encodePackIndex(pack, []packEntry{{ref: ref{typeChunk, ID{9}}, off: 0, n: 100}, {ref: ref{typePage, ID{8}}, off: 100, n: 50}}), int64(150))
	f.Add([]byte{}, int64(0))
	f.Fuzz(func(t *testing.T, plain []byte, size int64) {
		es, err := decodePackIndex(plain, pack, size, maxObject(typeChunk, DefaultChunkSize))
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		var end int64
		for _, e := range es {
			if int64(e.off)+int64(e.n) > size || e.n <= headerLen {
				t.Fatalf("entry %+v outside a pack of %d bytes", e, size)
			}
			if int64(e.off) < end {
				t.Fatalf("entry %+v overlaps the one before", e)
			}
			end = int64(e.off) + int64(e.n)
		}
		if !bytes.Equal(encodePackIndex(pack, es), plain) {
			t.Fatal("decoded index does not encode to its bytes")
		}
	})
}

// TestPackIndexBounds: an unauthenticated (unencrypted) repository's pack
// index cannot make a reader hold more than its pack could: entries that
// overlap, or more of them than fit the pack, are refused before they are
// decoded; the map refuses to grow past maxIndexEntries.
func TestPackIndexBounds(t *testing.T) {
	pack := ID{7}
	chunkMax := maxObject(typeChunk, DefaultChunkSize)
	var many []packEntry
	for i := range 100000 {
		many = append(many, packEntry{ref: ref{typeChunk, ID{byte(i), byte(i >> 8), byte(i >> 16)}}, off: 0, n: headerLen + 1})
	}
	if _, err := decodePackIndex(encodePackIndex(pack, many), pack, 4096, chunkMax); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("100,000 entries into a pack of 4 KiB: %v", err)
	}
	overlap := []packEntry{{ref: ref{typeChunk, ID{1}}, off: 0, n: 100}, {ref: ref{typeChunk, ID{2}}, off: 50, n: 100}}
	if _, err := decodePackIndex(encodePackIndex(pack, overlap), pack, 1<<20, chunkMax); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("overlapping entries: %v", err)
	}
	x := newPackIndex()
	x.limit = 3
	two := []packEntry{{ref: ref{typeChunk, ID{1}}, off: 0, n: 100}, {ref: ref{typeChunk, ID{2}}, off: 100, n: 100}}
	if err := x.addPack(ID{1}, 200, two, 10, true); err != nil {
		t.Fatal(err)
	}
	if err := x.addPack(ID{2}, 200, two, 10, true); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("a pack past the map's bound: %v", err)
	}
}

// FuzzMerged: arbitrary bytes as a merged pack index: decoding fails
// cleanly or gives records whose sizes are in bounds and that encode to
// the same bytes.
func FuzzMerged(f *testing.F) {
	pack := ID{1, 2, 3}
	idx := encodePackIndex(pack, []packEntry{{ref: ref{typeChunk, ID{9}}, off: 0, n: 100}})
	f.Add(encodeMerged([]mergedRecord{{pack: pack, packSize: 100, idxSize: int64(len(idx)) + headerLen, plain: idx}}))
	f.Add([]byte{})
	f.Add(encodeMerged(nil))
	idxMax := maxObject(typePackIndex, DefaultChunkSize)
	f.Fuzz(func(t *testing.T, plain []byte) {
		recs, err := decodeMerged(plain, idxMax)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		for _, rec := range recs {
			if rec.packSize <= 0 || rec.idxSize > idxMax || len(rec.plain) < 32 {
				t.Fatalf("record out of bounds: pack %d bytes, index %d, %d bytes", rec.packSize, rec.idxSize, len(rec.plain))
			}
		}
		if !bytes.Equal(encodeMerged(recs), plain) {
			t.Fatal("decoded merged index does not encode to its bytes")
		}
	})
}
