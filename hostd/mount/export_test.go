package mount

// MountOptions is mountOptions, for the external tests.
var MountOptions = mountOptions
