package policy

import (
	"testing"
	"time"
)

func TestLevelAt(t *testing.T) {
	berlin, _ := time.LoadLocation("Europe/Berlin")
	mon := time.Date(2026, 11, 30, 2, 0, 0, 0, berlin) // a Monday
	for _, tc := range []struct {
		full          Full
		now, lastFull time.Time
		want          string
	}{
		{Full{Period: "week", Location: berlin}, mon, mon.Add(-24 * time.Hour), "full"},  // Sunday before
		{Full{Period: "week", Location: berlin}, mon.Add(24 * time.Hour), mon, "auto"},   // Tuesday
		{Full{Period: "week", Location: berlin}, mon, time.Time{}, "full"},               // none kept
		{Full{Period: "month", Location: berlin}, mon.Add(24 * time.Hour), mon, "full"},  // 1 December
		{Full{Period: "month", Location: berlin}, mon, mon.Add(-48 * time.Hour), "auto"}, // 28 November
		{Full{Every: 7 * 24 * time.Hour}, mon, mon.Add(-7 * 24 * time.Hour), "full"},     // exactly a week
		{Full{Every: 7 * 24 * time.Hour}, mon, mon.Add(-6 * 24 * time.Hour), "auto"},     // six days
		{Full{}, mon, mon.Add(-365 * 24 * time.Hour), "auto"},                            // never
	} {
		p := &Policy{Full: tc.full}
		if got, why := p.LevelAt(tc.now, tc.lastFull); got != tc.want {
			t.Errorf("%s at %s, last full %s: %s (%s), want %s", tc.full, tc.now, tc.lastFull, got, why, tc.want)
		}
	}
}

func TestAssign(t *testing.T) {
	web := &Policy{Name: "web", Domains: []string{"web-*"}}
	db := &Policy{Name: "db", Domains: []string{"db?", "web-3"}, OptIn: true}
	got, bad := Assign([]*Policy{web, db}, []string{"web-1", "web-3", "db1", "mail", "other"},
		func(d string) []string {
			if d == "mail" {
				return []string{"db"}
			}
			return nil
		})
	if got["web-1"] != web || got["db1"] != db || got["mail"] != db || got["other"] != nil || got["web-3"] != nil {
		t.Fatalf("assigned %v", got)
	}
	if len(bad) != 1 || bad[0] != (Overlap{"web-3", "web", "db"}) {
		t.Fatalf("overlaps %v", bad)
	}
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{"7d": 7 * 24 * time.Hour, "2w": 14 * 24 * time.Hour, "36h": 36 * time.Hour, "1d12h": 36 * time.Hour, "90s": 90 * time.Second} {
		if got, err := ParseDuration(in); err != nil || got != want {
			t.Errorf("%s: %s %v, want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"", "7", "d", "7x", "1d-", "99999999d"} {
		if _, err := ParseDuration(in); err == nil {
			t.Errorf("%q parsed", in)
		}
	}
	if FormatDuration(36*time.Hour) != "1d12h0m0s" || FormatDuration(7*24*time.Hour) != "7d" {
		t.Error(FormatDuration(36*time.Hour), FormatDuration(7*24*time.Hour))
	}
}
