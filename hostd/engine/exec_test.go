package engine

import (
	"os/exec"

	"github.com/virtkeep/virtkeep/qmp"
)

func execCommand(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput()
}

func qmpClient(f *fixture) *qmp.Client { return qmp.NewClient(qmp.NewLibvirtMonitor(f.dom.Dom)) }

func qmpAddBitmap(node, name string) qmp.Action {
	return qmp.AddBitmap(node, name, qmp.BitmapOptions{Persistent: true})
}
