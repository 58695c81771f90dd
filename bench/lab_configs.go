package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
)

// benchDomain is the mail domain of the lab; the certificate is for it and
// the edge's ECH public_name defaults to it.
const benchDomain = "bench.example"

const (
	nginxStreamModule = "/usr/lib/nginx/modules/ngx_stream_module.so"
	dovecotDHFile     = "/usr/share/dovecot/dh.pem"
)

// labPorts are the loopback ports of the lab.
type labPorts struct {
	DovecotTLS   int // Dovecot imaps, TLS with OpenSSL (chatmail's 993)
	DovecotProxy int // Dovecot plaintext, haproxy = yes
	BackendProxy int // bench backend, PROXY header first
	Today        int // nginx ssl_preread on ALPN (chatmail's 443)
	Web          int // nginx's HTTPS site behind Today's default route (chatmail's 8443)
	Unrouted     int // a closed port for the route no figure uses (Postfix's 465)
	TermIMAP     int // nginx TLS termination to Dovecot
	TermEcho     int // nginx TLS termination to the bench backend
	EdgeIMAP     int // the edge to Dovecot
	EdgeIMAPS    int // its implicit-TLS IMAP listener (993), configured by the attack lab only
	EdgeEcho     int // a second edge to the bench backend
}

// dovecotConf is chatmail's Dovecot setup as far as it concerns connections
// (cmdeploy/src/cmdeploy/dovecot/dovecot.conf.j2 in chatmail/relay):
// imap-login in high-performance mode, ssl = required with TLS 1.3 only,
// default_client_limit 20000. Mail storage, auth and LMTP are left out; a
// static passdb keeps the auth process content. The haproxy listener is what
// the edge's and nginx termination's proxy mode connect to.
func dovecotConf(dir, certFile, keyFile string, p labPorts) string {
	dh := ""
	if _, err := os.Stat(dovecotDHFile); err == nil {
		dh = "ssl_dh = <" + dovecotDHFile + "\n"
	}
	return fmt.Sprintf(`# chatmail-edge bench: chatmail's Dovecot settings for connections.
instance_name = chatmail-edge-bench-%[4]d
base_dir = %[1]s/dovecot-run
log_path = %[1]s/dovecot.log
protocols = imap
listen = 127.0.0.1
default_client_limit = 20000
mail_server_comment = Chatmail server
imap_capability = +XDELTAPUSH XCHATMAIL
auth_mechanisms = plain
haproxy_trusted_networks = 127.0.0.0/8
passdb {
  driver = static
  args = password=bench
}
userdb {
  driver = static
  args = uid=dovenull gid=dovenull home=/nonexistent
}
service imap-login {
  inet_listener imap {
    port = 0
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = %[4]d
    ssl = yes
  }
  inet_listener imap_proxy {
    address = 127.0.0.1
    port = %[5]d
    haproxy = yes
  }
  service_count = 0
  vsz_limit = 1G
  process_min_avail = 10
}
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
ssl = required
ssl_cert = <%[2]s
ssl_key = <%[3]s
%[6]sssl_min_protocol = TLSv1.3
ssl_prefer_server_ciphers = yes
`, dir, certFile, keyFile, p.DovecotTLS, p.DovecotProxy, dh)
}

// nginxConf wraps a stream block in chatmail's globals (worker_processes
// auto, user www-data). chatmail's worker_connections 2048 and
// worker_rlimit_nofile 2048 would refuse 10,000 connections, so both are
// raised to the open-file limit the lab has.
func nginxConf(dir, name string, nofile uint64, stream string) string {
	return fmt.Sprintf(`# chatmail-edge bench: %[2]s
load_module %[4]s;
user www-data;
worker_processes auto;
worker_rlimit_nofile %[3]d;
pid %[1]s/nginx-%[2]s.pid;
daemon off;
error_log %[1]s/nginx-%[2]s.log warn;
events {
    worker_connections %[3]d;
}
%[5]s`, dir, name, nofile, nginxStreamModule, stream)
}

// todayStream is chatmail's stream block (chatmail-frontend.md §1.2):
// ssl_preread routing on the ALPN, TLS passthrough to Dovecot, no PROXY
// protocol, nginx's default listen backlog and timeouts. Everything
// without imap or smtp in its ALPN list, non-TLS bytes included, goes to
// the HTTPS site (todayWeb); Postfix is not in the lab.
func todayStream(p labPorts) string {
	return fmt.Sprintf(`stream {
    map $ssl_preread_alpn_protocols $proxy {
        default 127.0.0.1:%[4]d;
        ~\bsmtp\b 127.0.0.1:%[1]d;
        ~\bimap\b 127.0.0.1:%[2]d;
    }
    server {
        listen 127.0.0.1:%[3]d;
        proxy_pass $proxy;
        ssl_preread on;
    }
}
`, p.Unrouted, p.DovecotTLS, p.Today, p.Web)
}

// todayWeb is chatmail's HTTPS site on 8443 (chatmail-frontend.md §1.3,
// §1.4) as far as a connection's life goes: TLS 1.2 and 1.3, a static
// root, server_tokens off; no access log in the lab.
func todayWeb(dir, certFile, keyFile string, p labPorts) string {
	return fmt.Sprintf(`http {
    server_tokens off;
    access_log off;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_prefer_server_ciphers on;
    ssl_certificate %[2]s;
    ssl_certificate_key %[3]s;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:%[4]d ssl default_server;
        root %[1]s/www;
        index index.html;
        location / {
            try_files $uri $uri/ =404;
        }
    }
}
`, dir, certFile, keyFile, p.Web)
}

// terminationStream is the best a plain nginx can do without ECH: it ends
// TLS 1.3 itself (same ECDSA P-256 certificate) and proxies plaintext with a
// PROXY header, like the edge's proxy mode. The backlog matches Go's (it
// takes net.core.somaxconn), and a ticket key file lets resumption survive
// a restart as the edge's ticket keys do.
func terminationStream(certFile, keyFile, ticketKey string, p labPorts) string {
	server := func(listen, upstream int) string {
		return fmt.Sprintf(`    server {
        listen 127.0.0.1:%d ssl backlog=4096;
        proxy_pass 127.0.0.1:%d;
        proxy_protocol on;
    }
`, listen, upstream)
	}
	return fmt.Sprintf(`stream {
    ssl_protocols TLSv1.3;
    ssl_certificate %s;
    ssl_certificate_key %s;
    ssl_session_ticket_key %s;
%s%s}
`, certFile, keyFile, ticketKey, server(p.TermIMAP, p.DovecotProxy), server(p.TermEcho, p.BackendProxy))
}

// edgeFile is the edge's configuration file: HTTPS (ALPN imap) on a
// loopback port, IMAP in proxy mode to a backend, no plain HTTP listener.
type edgeFile struct {
	ChatmailINI, StateDir, CertFile, KeyFile string
	Port, Backend                            int
	MaxConnections                           int      // 0: the edge's default, lowered by the edge to fit the open-file limit
	Extra                                    []string // more lines of [edge] (the attack lab's)
}

func edgeConf(e edgeFile) string {
	var maxConns []string
	if e.MaxConnections > 0 {
		maxConns = []string{fmt.Sprintf("max_connections = %d", e.MaxConnections)}
	}
	return strings.Join(slices.Concat([]string{
		"[edge]",
		"chatmail_ini = " + e.ChatmailINI,
		"state_dir = " + e.StateDir,
		fmt.Sprintf("https = 127.0.0.1:%d", e.Port),
		"http =",
	}, maxConns, []string{
		"log_level = warn",
	}, e.Extra, []string{
		"",
		"[imap]",
		"backend = proxy",
		fmt.Sprintf("address = 127.0.0.1:%d", e.Backend),
		"",
		"[tls]",
		"cert = " + e.CertFile,
		"key = " + e.KeyFile,
		"",
		"# The admin listener runs as on a relay (status probes included), on a",
		"# port of its own: two edges run side by side.",
		"[admin]",
		"address = 127.0.0.1:0",
		"",
	}), "\n")
}
