package restore_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"libvirt.org/go/libvirt"

	"github.com/virtkeep/virtkeep/hostd/domain"
	"github.com/virtkeep/virtkeep/hostd/fixture/hostile"
	"github.com/virtkeep/virtkeep/hostd/restore"
	"github.com/virtkeep/virtkeep/testenv"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

// TestRestoreHostileDomain: restore --as from a point whose saved
// definition is hostile defines a domain without any of it in libvirt;
// with Strict it is refused and nothing is left.
func TestRestoreHostileDomain(t *testing.T) {
	env := vm.Libvirt(t)
	r, m := hostileDomainPoint(t, nil, strings.Replace(hostile.DomainXML, "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/etc/shadow'/><target dev='vdb' bus='virtio'/></disk>", "", 1))
	e := &restore.Restorer{Conn: env.Conn, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	dir := testenv.TempDir(t)
	name := "vk-" + filepath.Base(dir)
	if _, err := e.Domain(testCtx(t), r, m.ID, restore.DomainRequest{Name: name, Dir: filepath.Join(dir, "strict"), Strict: true}); !errors.Is(err, domain.ErrUnsafeDomain) || !strings.Contains(err.Error(), "hostdev") {
		t.Fatalf("strict restore of a hostile definition: %v", err)
	}
	if d, err := env.Conn.LookupDomainByName(name); err == nil {
		d.Free()
		t.Fatal("a strict refusal defined the domain")
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "strict")); len(ents) != 0 {
		t.Fatalf("a strict refusal left %v", ents)
	}
	uuid, err := e.Domain(testCtx(t), r, m.ID, restore.DomainRequest{Name: name, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	dom, err := env.Conn.LookupDomainByUUIDString(uuid)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = dom.Undefine()
		dom.Free()
	})
	xml, err := dom.GetXMLDesc(libvirt.DOMAIN_XML_INACTIVE | libvirt.DOMAIN_XML_SECURE)
	if err != nil {
		t.Fatal(err)
	}
	for _, mark := range hostile.Marks {
		if strings.Contains(xml, mark) {
			t.Errorf("%q reached libvirt:\n%s", mark, xml)
		}
	}
	if !strings.Contains(xml, filepath.Join(dir, "vda.qcow2")) {
		t.Fatalf("the restored disk is not the domain's:\n%s", xml)
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
