package service

import (
	"errors"
	"testing"

	"chatmail-edge/config"
)

// The demo runs from its flags: a reload has nothing to read and says so.
func TestDemoRefusesReload(t *testing.T) {
	d := startTestDemo(t, t.TempDir())
	_, err := d.Reload(func() (*config.Settings, error) {
		t.Error("the demo's reload read a configuration")
		return nil, errors.New("unreachable")
	})
	if !errors.Is(err, errNoConfiguration) {
		t.Fatalf("reload of the demo: %v, want %v", err, errNoConfiguration)
	}
}
