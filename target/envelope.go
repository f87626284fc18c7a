package target

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// ID names a content-addressed object: SHA-256 of its plaintext, or
// HMAC-SHA-256 under the repository's id-key when it is encrypted.
type ID [32]byte

// ZeroID stands for an all-zero chunk or page, which is never stored.
var ZeroID ID

func (id ID) String() string { return hex.EncodeToString(id[:]) }

// IsZero reports whether id is ZeroID.
func (id ID) IsZero() bool { return id == ZeroID }

// ParseID parses 64 hex digits.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 64 {
		return id, fmt.Errorf("object id %q: want 64 hex digits", s)
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("object id %q: %w", s, err)
	}
	return id, nil
}

// Object types of the envelope.
const (
	typeChunk   = 1
	typePage    = 2
	typeRoot    = 3
	typeManifst = 4
	typeJournal = 5
	typeBlob    = 6
)

const (
	flagZstd      = 1 << 0
	flagEncrypted = 1 << 1
	headerLen     = 12
	nonceLen      = 12
	tagLen        = 16
)

var envelopeMagic = [4]byte{'V', 'K', 'O', '1'}

// ErrCorrupt is wrapped by every error about damaged repository content.
var ErrCorrupt = errors.New("repository object damaged")

// ErrMissing is wrapped by errors about an object a point references that
// the repository does not hold.
var ErrMissing = errors.New("repository object missing")

// IsIntegrity reports whether err is about the repository's content being
// damaged or incomplete: no retry can mend it, only a repair (check
// --quarantine and the next backup) or another copy.
func IsIntegrity(err error) bool {
	return errors.Is(err, ErrCorrupt) || errors.Is(err, ErrMissing)
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// maxPlain is the largest plaintext each object type may hold.
func maxPlain(typ byte, chunkSize int) int {
	switch typ {
	case typeChunk:
		return chunkSize
	case typePage:
		return pageEntries * 32
	case typeMerged:
		return maxMergedPlain
	default:
		return maxObjectPlain
	}
}

// maxObjectPlain bounds the plaintext of roots, manifests, journal entries
// and blobs.
const maxObjectPlain = 64 << 20

// maxObject is the most bytes a stored object of type typ can have: its
// plaintext limit plus the envelope (compression is only kept when it is
// smaller than the plaintext).
func maxObject(typ byte, chunkSize int) int64 {
	return int64(maxPlain(typ, chunkSize)) + headerLen + nonceLen + tagLen
}

// codec seals and opens envelopes and computes IDs for one repository.
type codec struct {
	compress  bool
	chunkSize int
	aead      cipher.AEAD // nil: not encrypted
	idKey     []byte      // nil: plain SHA-256

	encPool sync.Pool // *zstd.Encoder
	decPool sync.Pool // *zstd.Decoder
	macPool sync.Pool // hash.Hash for HMAC
}

func newCodec(compress bool, chunkSize int, keys *subkeys) (*codec, error) {
	c := &codec{compress: compress, chunkSize: chunkSize}
	if keys != nil {
		block, err := aes.NewCipher(keys.enc[:])
		if err != nil {
			return nil, err
		}
		if c.aead, err = cipher.NewGCM(block); err != nil {
			return nil, err
		}
		c.idKey = append([]byte(nil), keys.id[:]...)
		c.macPool.New = func() any { return hmac.New(sha256.New, c.idKey) }
	}
	c.encPool.New = func() any {
		e, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true))
		return e
	}
	c.decPool.New = func() any {
		// DecodeAll never decodes past the capacity it is given (the
		// envelope's declared length): a frame without a content size must
		// not inflate an 11 KiB object into hundreds of MiB.
		d, _ := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxObjectPlain),
			zstd.WithDecodeAllCapLimit(true))
		return d
	}
	return c, nil
}

// id computes the object ID of plaintext.
func (c *codec) id(plain []byte) ID {
	if c.idKey == nil {
		return sha256.Sum256(plain)
	}
	h := c.macPool.Get().(interface {
		Write([]byte) (int, error)
		Sum([]byte) []byte
		Reset()
	})
	h.Reset()
	_, _ = h.Write(plain)
	var id ID
	h.Sum(id[:0])
	c.macPool.Put(h)
	return id
}

// seal wraps plain in an envelope of type typ.
func (c *codec) seal(typ byte, plain []byte) []byte {
	return c.sealTo(make([]byte, 0, headerLen+nonceLen+len(plain)+tagLen+64), typ, plain)
}

// scratch holds the compressed payloads sealTo makes before they are
// copied into the envelope.
var scratch = sync.Pool{New: func() any { return new([]byte) }}

// sealTo appends the envelope of plain to dst (see seal).
func (c *codec) sealTo(dst []byte, typ byte, plain []byte) []byte {
	if c.sealsInPlace() {
		return c.appendPlain(dst, typ, plain)
	}
	hdr := header(typ, plain)
	payload := plain
	z := scratch.Get().(*[]byte)
	defer scratch.Put(z)
	switch {
	case !c.squeeze(plain):
	case !c.compress:
		*z = appendZeroFrame((*z)[:0], plain)
		payload = *z
		hdr[5] |= flagZstd
	default:
		enc := c.encPool.Get().(*zstd.Encoder)
		*z = enc.EncodeAll(plain, (*z)[:0])
		c.encPool.Put(enc)
		if len(*z) < len(plain) {
			payload = *z
			hdr[5] |= flagZstd
		}
	}
	if c.aead == nil {
		return append(append(dst, hdr[:]...), payload...)
	}
	hdr[5] |= flagEncrypted
	start := len(dst)
	dst = append(dst, hdr[:]...)
	dst = append(dst, make([]byte, nonceLen)...)
	nonce := dst[start+headerLen:]
	if _, err := rand.Read(nonce); err != nil {
		panic("virtkeep: no randomness: " + err.Error())
	}
	return c.aead.Seal(dst, nonce, payload, hdr[:])
}

// header is the envelope header of plain, without flags.
func header(typ byte, plain []byte) [headerLen]byte {
	var hdr [headerLen]byte
	copy(hdr[:4], envelopeMagic[:])
	hdr[4] = typ
	binary.BigEndian.PutUint32(hdr[8:], uint32(len(plain)))
	return hdr
}

// squeeze says whether sealing plain tries compression. Without
// compression, a chunk that is largely zeroes (where a guest disk's hole
// cuts through it) is still squeezed: that costs little CPU and saves
// writing and storing the zeroes.
func (c *codec) squeeze(plain []byte) bool {
	return len(plain) > 64 && (c.compress || zeroShare(plain) >= 4)
}

// sealsInPlace says whether plain's envelope is made by copying: neither
// compressed nor encrypted, or only its zero blocks squeezed (see
// appendZeroFrame). appendPlain then makes it where it is stored.
func (c *codec) sealsInPlace() bool { return c.aead == nil && !c.compress }

// appendPlain appends to dst the envelope of plain that seal makes when
// sealsInPlace holds.
func (c *codec) appendPlain(dst []byte, typ byte, plain []byte) []byte {
	hdr := header(typ, plain)
	if !c.squeeze(plain) {
		return append(append(dst, hdr[:]...), plain...)
	}
	hdr[5] |= flagZstd
	return appendZeroFrame(append(dst, hdr[:]...), plain)
}

// appendZeroFrame appends a zstd frame of plain (RFC 8878) made of RLE
// blocks for its all-zero 4 KiB blocks and raw blocks for the rest: what
// compression "none" stores for a chunk a guest hole cuts through, at the
// cost of a copy instead of a compressor's search. Any zstd decoder reads
// it.
func appendZeroFrame(dst, plain []byte) []byte {
	const blk, maxBlock = 4096, 128 << 10
	// Magic, then a single-segment descriptor with a 4-byte content size.
	dst = append(dst, 0x28, 0xb5, 0x2f, 0xfd, 0xa0)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(plain)))
	for i := 0; i < len(plain); {
		zero := IsZero(plain[i:min(i+blk, len(plain))])
		j := i
		for j < len(plain) && j-i < maxBlock {
			end := min(j+blk, len(plain), i+maxBlock)
			if IsZero(plain[j:end]) != zero {
				break
			}
			j = end
		}
		h := uint32(j-i) << 3 // block size; type 0: raw
		if zero {
			h |= 1 << 1 // RLE: one byte, repeated
		}
		if j == len(plain) {
			h |= 1 // last block
		}
		dst = append(dst, byte(h), byte(h>>8), byte(h>>16))
		if zero {
			dst = append(dst, 0)
		} else {
			dst = append(dst, plain[i:j]...)
		}
		i = j
	}
	return dst
}

// open unwraps an envelope that must be of type typ and returns the
// plaintext. Every inconsistency is an error wrapping ErrCorrupt.
func (c *codec) open(typ byte, obj []byte) ([]byte, error) {
	if len(obj) < headerLen {
		return nil, corrupt("object of %d bytes is shorter than its header", len(obj))
	}
	hdr := obj[:headerLen]
	if [4]byte(hdr[:4]) != envelopeMagic {
		return nil, corrupt("bad magic %q", hdr[:4])
	}
	if hdr[4] != typ {
		return nil, corrupt("object type %d, want %d", hdr[4], typ)
	}
	flags := hdr[5]
	if flags&^(flagZstd|flagEncrypted) != 0 || hdr[6] != 0 || hdr[7] != 0 {
		return nil, corrupt("unknown flags %#x", hdr[5:8])
	}
	plainLen := int(binary.BigEndian.Uint32(hdr[8:]))
	if plainLen > maxPlain(typ, c.chunkSize) {
		return nil, corrupt("plaintext of %d bytes is too long for type %d", plainLen, typ)
	}
	body := obj[headerLen:]
	encrypted := flags&flagEncrypted != 0
	if encrypted != (c.aead != nil) {
		if encrypted {
			return nil, corrupt("object is encrypted but the repository is not")
		}
		return nil, corrupt("object is not encrypted but the repository is")
	}
	if encrypted {
		if len(body) < nonceLen+tagLen {
			return nil, corrupt("encrypted body of %d bytes", len(body))
		}
		p, err := c.aead.Open(nil, body[:nonceLen], body[nonceLen:], hdr)
		if err != nil {
			return nil, corrupt("authentication failed (damaged, or another key)")
		}
		body = p
	}
	if flags&flagZstd == 0 {
		if len(body) != plainLen {
			return nil, corrupt("payload of %d bytes, header says %d", len(body), plainLen)
		}
		return body, nil
	}
	dec := c.decPool.Get().(*zstd.Decoder)
	defer c.decPool.Put(dec)
	out := make([]byte, 0, plainLen)
	// Guard against decompression bombs: the frame must not exceed plainLen.
	if fs, err := frameContentSize(body); err == nil && fs > uint64(plainLen) {
		return nil, corrupt("compressed frame of %d bytes, header says %d", fs, plainLen)
	}
	out, err := dec.DecodeAll(body, out)
	if errors.Is(err, zstd.ErrDecoderSizeExceeded) || len(out) > plainLen {
		return nil, corrupt("compressed frame inflates past the %d bytes the header says", plainLen)
	}
	if err != nil {
		return nil, corrupt("decompress: %v", err)
	}
	if len(out) != plainLen {
		return nil, corrupt("decompressed to %d bytes, header says %d", len(out), plainLen)
	}
	return out, nil
}

func frameContentSize(b []byte) (uint64, error) {
	var h zstd.Header
	if err := h.Decode(b); err != nil {
		return 0, err
	}
	if !h.HasFCS {
		return 0, errors.New("no frame content size")
	}
	return h.FrameContentSize, nil
}

// zeroShare counts, in sixteenths of b, the 4 KiB blocks that are all zero.
func zeroShare(b []byte) int {
	const blk = 4096
	if len(b) < blk {
		return 0
	}
	zero, n := 0, 0
	for i := 0; i+blk <= len(b); i += blk {
		n++
		if IsZero(b[i : i+blk]) {
			zero++
		}
	}
	return zero * 16 / n
}
