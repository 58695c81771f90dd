"""Renders the files `cmdeploy run` writes on a relay, from chatmail/relay's
own templates and chatmaild's Config, into this folder (see README.md).

    git -C RELAY archive 48ad92bf chatmaild/src cmdeploy/src | tar -x -C /tmp/relay
    PYTHONPATH=/tmp/relay/chatmaild/src:/usr/lib/python3/dist-packages \\
        python3 render.py /tmp/relay chat.example.org

It needs jinja2 and iniconfig (python3-jinja2, python3-iniconfig).
"""

import pathlib
import shutil
import sys

import jinja2
from chatmaild.config import read_config

relay, domain = pathlib.Path(sys.argv[1]), sys.argv[2]
out = pathlib.Path(__file__).parent
src = relay / "cmdeploy/src/cmdeploy"

# cmdeploy init: chatmail.ini from chatmaild's template, as it is on the relay.
ini = (relay / "chatmaild/src/chatmaild/ini/chatmail.ini.f").read_text()
(out / "chatmail.ini").write_text(ini.format(mail_domain=domain))
config = read_config(out / "chatmail.ini")


def render(template, dest, **params):
    # pyinfra's files.template (pyinfra.api.util.get_template)
    t = jinja2.Template((src / template).read_text(), keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    (out / dest).write_text(t.render(**params))


# DovecotDeployer, PostfixDeployer, NginxDeployer, AcmetoolDeployer configure()
render("dovecot/dovecot.conf.j2", "dovecot.conf", config=config, debug=False, disable_ipv6=config.disable_ipv6)
render("postfix/main.cf.j2", "main.cf", config=config, disable_ipv6=config.disable_ipv6)
render("postfix/master.cf.j2", "master.cf", config=config, debug=False)
render("nginx/nginx.conf.j2", "nginx.conf", config=config, disable_ipv6=config.disable_ipv6)
render("acmetool/desired.yaml.j2", "acmetool-desired", domains=[domain, f"mta-sts.{domain}", f"www.{domain}"])
render("acmetool/target.yaml.j2", "acmetool-target")
for unit in ("acmetool-redirector.service", "acmetool-reconcile.service", "acmetool-reconcile.timer"):
    shutil.copy(src / "acmetool" / unit, out / unit)
