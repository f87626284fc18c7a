package target

import "context"

// SetOwner makes r act as another lock holder (tests of two hosts).
func SetOwner(r *Repository, o Owner) { r.owner = o }

// OwnerOf is r's lock identity.
func OwnerOf(r *Repository) Owner { return r.owner }

// FirstPageObject says where the first index page of m's first disk is
// stored: the key of its pack (or own object), offset and length.
func FirstPageObject(ctx context.Context, r *Repository, m *Manifest) (string, int64, int64, error) {
	rt, err := r.diskRoot(ctx, &m.Disks[0])
	if err != nil {
		return "", 0, 0, err
	}
	if err := r.loadPacks(ctx); err != nil {
		return "", 0, 0, err
	}
	for _, pid := range rt.pages {
		if pid.IsZero() {
			continue
		}
		if pack, l, ok := r.packs.lookup(ref{typePage, pid}); ok {
			return packKey(pack), int64(l.off), int64(l.n), nil
		}
		return objectKey(typePage, pid), 0, -1, nil
	}
	return "", 0, 0, ErrNotFound
}
