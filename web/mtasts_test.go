package web

import (
	"strings"
	"testing"
)

func TestMTASTS(t *testing.T) {
	h := newTestServer(t, nil).Handler()
	for _, host := range []string{"mta-sts.chat.example", "chat.example", "MTA-STS.Chat.Example."} {
		rec := do(h, "GET", "https://"+host+"/.well-known/mta-sts.txt")
		if rec.Code != 200 || rec.Header().Get("Content-Type") != "text/plain" ||
			rec.Body.String() != "version: STSv1\nmode: enforce\nmx: chat.example\nmax_age: 2419200\n" {
			t.Fatalf("%s: %d %q %q", host, rec.Code, rec.Header().Get("Content-Type"), rec.Body)
		}
	}
	if rec := do(h, "POST", "https://mta-sts.chat.example/.well-known/mta-sts.txt"); rec.Code != 405 {
		t.Fatalf("POST: %d", rec.Code)
	}

	testing := MTASTSConfig{Mode: "testing", MaxAge: 86400}
	if got := MTASTSPolicy("chat.example", testing); got != "version: STSv1\nmode: testing\nmx: chat.example\nmax_age: 86400\n" {
		t.Fatalf("testing policy %q", got)
	}
	ids := map[string]bool{}
	for _, c := range []MTASTSConfig{{}, testing, {Mode: "none"}, {MaxAge: 604800}} {
		id := MTASTSPolicyID(MTASTSPolicy("chat.example", c))
		if len(id) < 1 || len(id) > 32 || strings.Trim(id, "0123456789abcdef") != "" || ids[id] {
			t.Fatalf("id %q of %+v: not 1*32 ALPHA/DIGIT or not unique", id, c)
		}
		ids[id] = true
	}
	if rec := MTASTSRecord("chat.example", MTASTSConfig{}); rec != `_mta-sts.chat.example. 3600 IN TXT "v=STSv1; id=`+MTASTSPolicyID(MTASTSPolicy("chat.example", MTASTSConfig{}))+`"` {
		t.Fatalf("record %q", rec)
	}
	for _, bad := range []MTASTSConfig{{Mode: "enforcing"}, {MaxAge: 31557601}} {
		if _, err := New(Config{Domain: "chat.example", MTASTS: bad}, Deps{ECHConfigList: func() []byte { return nil }}); err == nil {
			t.Errorf("config %+v accepted", bad)
		}
	}
}
