package target

// SetOwner makes r act as another lock holder (tests of two hosts).
func SetOwner(r *Repository, o Owner) { r.owner = o }

// OwnerOf is r's lock identity.
func OwnerOf(r *Repository) Owner { return r.owner }
