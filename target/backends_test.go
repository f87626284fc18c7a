package target_test

import (
	"testing"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/faulty"
	"github.com/virtkeep/virtkeep/target/local"
	"github.com/virtkeep/virtkeep/target/mem"
	"github.com/virtkeep/virtkeep/target/targettest"
)

func TestConformanceMem(t *testing.T) {
	targettest.Run(t, func(t *testing.T) target.Backend { return mem.New() })
}

func TestConformanceLocal(t *testing.T) {
	targettest.Run(t, func(t *testing.T) target.Backend {
		b, err := local.Open(local.Config{Path: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
}

func TestConformanceLocalFsyncEach(t *testing.T) {
	targettest.Run(t, func(t *testing.T) target.Backend {
		b, err := local.Open(local.Config{Path: t.TempDir(), FsyncEach: true})
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
}

func TestConformanceFaultyPassThrough(t *testing.T) {
	targettest.Run(t, func(t *testing.T) target.Backend { return faulty.Wrap(mem.New()) })
}
