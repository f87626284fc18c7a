package nbd

// Wire constants of the NBD protocol (proto.md of the NBD project).
const (
	nbdMagic     = 0x4e42444d41474943 // "NBDMAGIC"
	ihaveOpt     = 0x49484156454F5054 // "IHAVEOPT"
	optReplyMagc = 0x0003e889045565a9
	requestMagic = 0x25609513
	simpleMagic  = 0x67446698
	structMagic  = 0x668e33ef

	// Handshake flags (server) and client flags.
	flagFixedNewstyle  = 1 << 0
	flagNoZeroes       = 1 << 1
	flagCFixedNewstyle = 1 << 0
	flagCNoZeroes      = 1 << 1

	// Options.
	optExportName       = 1
	optAbort            = 2
	optList             = 3
	optStartTLS         = 5
	optInfo             = 6
	optGo               = 7
	optStructuredReply  = 8
	optListMetaContext  = 9
	optSetMetaContext   = 10
	optExtendedHeaders  = 11
	repAck              = 1
	repServer           = 2
	repInfo             = 3
	repMetaContext      = 4
	repFlagError        = 1 << 31
	repErrUnsup         = repFlagError | 1
	repErrPolicy        = repFlagError | 2
	repErrInvalid       = repFlagError | 3
	repErrPlatform      = repFlagError | 4
	repErrTLSReqd       = repFlagError | 5
	repErrUnknown       = repFlagError | 6
	repErrShutdown      = repFlagError | 7
	repErrBlockSizeReqd = repFlagError | 8
	repErrTooBig        = repFlagError | 9
	infoExport          = 0
	infoName            = 1
	infoDescription     = 2
	infoBlockSize       = 3

	// Commands.
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7

	// Command flags.
	cmdFlagFUA      = 1 << 0
	cmdFlagNoHole   = 1 << 1
	cmdFlagDF       = 1 << 2
	cmdFlagReqOne   = 1 << 3
	cmdFlagFastZero = 1 << 4

	// Structured reply chunk types and flags.
	replyFlagDone        = 1 << 0
	replyTypeNone        = 0
	replyTypeOffsetData  = 1
	replyTypeOffsetHole  = 2
	replyTypeBlockStatus = 5
	replyTypeError       = 1<<15 | 1
	replyTypeErrorOffset = 1<<15 | 2

	// Protocol errno values.
	errPerm      = 1
	errIO        = 5
	errNoMem     = 12
	errInval     = 22
	errNoSpc     = 28
	errOverflow  = 75
	errNotSup    = 95
	errShutdown  = 108
	maxStringLen = 4096
)

// Transmission flags of an export.
const (
	FlagHasFlags        = 1 << 0
	FlagReadOnly        = 1 << 1
	FlagSendFlush       = 1 << 2
	FlagSendFUA         = 1 << 3
	FlagRotational      = 1 << 4
	FlagSendTrim        = 1 << 5
	FlagSendWriteZeroes = 1 << 6
	FlagSendDF          = 1 << 7
	FlagCanMultiConn    = 1 << 8
	FlagSendCache       = 1 << 10
	FlagSendFastZero    = 1 << 11
)

// Meta contexts.
const (
	// ContextBaseAllocation is the standard allocation context: flags
	// StateHole and StateZero.
	ContextBaseAllocation = "base:allocation"
	// ContextDirtyBitmapPrefix prefixes QEMU's dirty bitmap contexts
	// (qemu:dirty-bitmap:NAME); flag StateDirty.
	ContextDirtyBitmapPrefix = "qemu:dirty-bitmap:"
	// ContextAllocationDepth is QEMU's backing-chain depth context: the flags
	// value is the depth at which the data is allocated, 0 for unallocated.
	ContextAllocationDepth = "qemu:allocation-depth"

	StateHole  = 1 << 0 // base:allocation: not allocated
	StateZero  = 1 << 1 // base:allocation: reads as zeroes
	StateDirty = 1 << 0 // qemu:dirty-bitmap: changed
)

// DefaultMaxBlock is the largest payload assumed when a server states no
// block size constraints (the protocol's 32 MiB).
const DefaultMaxBlock = 32 << 20
