"""The client commands' own admin token goes only to a server that proves it holds the local
issuer's key: never to an impostor that took the loopback port.

Each impostor is an HTTP server on a loopback port that records every request and answers any of
them with plausible JSON; they differ in what they answer to the proof's challenge. The commands
run as a user runs them, as subprocesses with the session's issuer key readable.
"""

from __future__ import annotations

import base64
import http.server
import json
import shutil
import subprocess
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.auth.keys import local_key_set
from gateway.auth.proof import ProofKey, proof_key, prove
from tests.acceptance.gateway_process import ISSUER_KEY, GatewayProcess
from tests.acceptance.test_cli import muster
from tests.acceptance.test_serve import NODES, _stop_leftover_postgres

SPEC = {
    "name": "bait",
    "tenant": "acme",
    "replicas": {"worker": {"image": "trainer:1", "resources": {"cpu": "1", "memory": "1Gi"}}},
}
JOB = {**SPEC, "id": "00000000-0000-0000-0000-000000000000", "state": "queued"}
COMMANDS = {"jobs": (("jobs",), None), "submit": (("submit", "-"), json.dumps(SPEC))}


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    """A real gateway's URL; it shares the session's issuer key with the client commands."""
    data_dir = Path(tempfile.mkdtemp(prefix="mo-", dir="/tmp"))
    nodes = data_dir / "nodes.yaml"
    nodes.write_text(NODES)
    process = GatewayProcess(
        {
            "MUSTER_DATA_DIR": str(data_dir),
            "MUSTER_BACKEND": "static",
            "MUSTER_NODES_FILE": str(nodes),
        }
    )
    try:
        yield process.start()
    finally:
        process.close()
        _stop_leftover_postgres(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


# --- the servers on the loopback URL ---------------------------------------------------------

#: What a server answers to ``GET /v1/issuer/proof``: (status, body) for its port and the query.
ProofAnswer = Callable[["Server", dict[str, list[str]]], tuple[int, Any]]


class Server(http.server.ThreadingHTTPServer):
    """Records each request as (method, path with query, headers) and answers every one with
    plausible JSON; ``answer_proof`` decides what the proof's challenge gets."""

    def __init__(self, answer_proof: ProofAnswer) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer_proof = answer_proof
        self.seen: list[tuple[str, str, dict[str, str]]] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def authorizations(self) -> list[str]:
        return [
            headers["Authorization"] for _, _, headers in self.seen if "Authorization" in headers
        ]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.seen.append((self.command, self.path, dict(self.headers.items())))
        parts = urlsplit(self.path)
        status: int = 200
        body: Any = {"items": [], "next_cursor": None}
        headers: dict[str, str] = {}
        if parts.path == "/v1/issuer/proof":
            status, body = self.server.answer_proof(self.server, parse_qs(parts.query))
            if 300 <= status < 400:
                headers, body = {"Location": body}, {}
        elif self.command == "POST":
            status, body = 201, JOB
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[ProofAnswer], Server]]:
    """Start a server with the given answer to the proof; every one started stops afterwards."""
    started: list[tuple[Server, threading.Thread]] = []

    def start(answer_proof: ProofAnswer) -> Server:
        server = Server(answer_proof)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        started.append((server, thread))
        return server

    yield start
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join()


def _our_key() -> ProofKey:
    return proof_key(local_key_set(ISSUER_KEY))


def _challenge(query: dict[str, list[str]]) -> str:
    return query.get("challenge", [""])[0]


def _impostors(gateway: str, other_key: ProofKey) -> dict[str, ProofAnswer]:
    """What an impostor can answer to the challenge without holding the key on its port."""

    def relay(server: Server, query: dict[str, list[str]]) -> tuple[int, Any]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{gateway}/v1/issuer/proof?challenge={_challenge(query)}") as answer:
            return 200, json.loads(answer.read())

    return {
        "plausible JSON": lambda server, query: (200, {"items": [], "next_cursor": None}),
        "no such route": lambda server, query: (404, {"title": "Not Found"}),
        "a page that is not JSON": lambda server, query: (200, b"<html>welcome</html>"),
        "a proof replayed from an earlier challenge": lambda server, query: (
            200,
            prove(_our_key(), challenge="r" * 43, port=server.port),
        ),
        "a proof made with another key, naming ours": lambda server, query: (
            200,
            {
                **prove(other_key, challenge=_challenge(query), port=server.port),
                "kid": _our_key().kid,
            },
        ),
        "the real gateway's proof, relayed from its port": relay,
        "a redirect to the real gateway": lambda server, query: (
            307,
            f"{gateway}/v1/issuer/proof?challenge={_challenge(query)}",
        ),
    }


@pytest.fixture(scope="module")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> ProofKey:
    return proof_key(local_key_set(tmp_path_factory.mktemp("other") / "issuer-key.json"))


def _genuine(server: Server, query: dict[str, list[str]]) -> tuple[int, Any]:
    """A server that holds the session's key answers for its own port."""
    return 200, prove(_our_key(), challenge=_challenge(query), port=server.port)


# --- impostors get no token ------------------------------------------------------------------


#: Each impostor, and the reason the command gives for refusing it.
IMPOSTORS = {
    "plausible JSON": "its answer to the challenge is not a proof",
    "no such route": "it answered the challenge with HTTP 404",
    "a page that is not JSON": "GET /v1/issuer/proof answered something not JSON",
    "a proof replayed from an earlier challenge": "its proof does not verify",
    "a proof made with another key, naming ours": "its proof does not verify",
    "the real gateway's proof, relayed from its port": "its proof does not verify",
    "a redirect to the real gateway": "it answered the challenge with HTTP 307",
}


def _refused_without_a_token(
    result: subprocess.CompletedProcess[str], server: Server, reason: str
) -> None:
    """The command failed with the one-line message and the server saw no token, and nothing but
    the challenge (the job spec of ``submit`` was not sent either)."""
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr == (
        f"muster: the server at {server.url} did not prove it is this machine's Muster "
        f"({reason}), so no token was sent to it; pass --token or set MUSTER_TOKEN\n"
    )
    assert server.authorizations() == []
    assert [(method, path.split("?")[0]) for method, path, _ in server.seen] == [
        ("GET", "/v1/issuer/proof")
    ]


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("impostor", list(IMPOSTORS))
def test_an_impostor_on_the_loopback_url_receives_no_token(
    gateway: str,
    other_key: ProofKey,
    serve: Callable[[ProofAnswer], Server],
    impostor: str,
    command: str,
) -> None:
    server = serve(_impostors(gateway, other_key)[impostor])
    args, stdin = COMMANDS[command]

    result = muster(*args, url=server.url, stdin=stdin)

    _refused_without_a_token(result, server, IMPOSTORS[impostor])


# --- a server holding the key gets the token ---------------------------------------------------


def test_a_server_that_proves_the_key_gets_a_ten_minute_admin_token_after_the_challenge(
    serve: Callable[[ProofAnswer], Server],
) -> None:
    server = serve(_genuine)

    result = muster("jobs", url=server.url)

    assert result.returncode == 0, result.stderr
    (proof_request, jobs_request) = server.seen
    assert proof_request[1].startswith("/v1/issuer/proof?challenge=")
    assert "Authorization" not in proof_request[2]
    assert jobs_request[1].startswith("/v1/jobs")
    token = jobs_request[2]["Authorization"].removeprefix("Bearer ")
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["groups"] == ["muster-admins"]
    assert claims["exp"] - claims["iat"] == 600


def test_each_command_sends_a_fresh_challenge(serve: Callable[[ProofAnswer], Server]) -> None:
    server = serve(_genuine)

    for _ in range(2):
        assert muster("jobs", url=server.url).returncode == 0

    challenges = [path for _, path, _ in server.seen if path.startswith("/v1/issuer/proof")]
    assert len(set(challenges)) == 2


def test_the_own_token_works_end_to_end_against_the_real_gateway(gateway: str) -> None:
    # Listing tenants is for platform admins only: it works only with the own admin token.
    result = muster("tenants", url=gateway)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("NAME")


def test_the_real_gateway_gets_no_token_signed_with_another_key(
    gateway: str, tmp_path: Path
) -> None:
    other = tmp_path / "issuer-key.json"
    local_key_set(other)

    result = muster("tenants", url=gateway, MUSTER_ISSUER_KEY=str(other))

    assert result.returncode == 2
    assert "did not prove it is this machine's Muster (it holds issuer key" in result.stderr
    assert "pass --token or set MUSTER_TOKEN" in result.stderr


def test_without_a_readable_key_no_challenge_is_sent_and_no_token(
    serve: Callable[[ProofAnswer], Server],
) -> None:
    server = serve(_genuine)

    result = muster("jobs", url=server.url, MUSTER_ISSUER_KEY="/nonexistent/issuer-key.json")

    assert result.returncode == 0, result.stderr
    assert [path for _, path, _ in server.seen] == ["/v1/jobs"]
    assert server.authorizations() == []


# --- muster ui: a sign-in link only for a server that proves the key ---------------------------


@pytest.mark.parametrize(
    "impostor", ["plausible JSON", "a proof made with another key, naming ours"]
)
def test_an_impostor_gets_no_dashboard_sign_in_link(
    gateway: str, other_key: ProofKey, serve: Callable[[ProofAnswer], Server], impostor: str
) -> None:
    server = serve(_impostors(gateway, other_key)[impostor])

    result = muster("ui", url=server.url)

    assert result.returncode == 2
    assert result.stdout == ""
    assert f"({IMPOSTORS[impostor]}), so no sign-in link was made" in result.stderr
    assert [path.split("?")[0] for _, path, _ in server.seen] == ["/v1/issuer/proof"]


def test_the_sign_in_link_is_a_one_minute_code_of_the_roles_asked_for(
    serve: Callable[[ProofAnswer], Server],
) -> None:
    server = serve(_genuine)

    result = muster("ui", "--tenant", "acme", "--role", "viewer", "--user", "vic", url=server.url)

    assert result.returncode == 0, result.stderr
    link = urlsplit(result.stdout.strip())
    assert f"{link.scheme}://{link.netloc}{link.path}" == f"{server.url}/ui/login"
    code = parse_qs(link.query)["code"][0]
    claims = json.loads(base64.urlsafe_b64decode(code.split(".")[1] + "=="))
    assert claims["aud"] == "muster-ui-sign-in"
    assert claims["groups"] == ["muster:acme:viewer"]
    assert claims["sub"] == "vic"
    assert claims["exp"] - claims["iat"] == 60


def test_the_sign_in_link_signs_a_browser_in_to_the_real_gateway_once(gateway: str) -> None:
    link = muster("ui", url=gateway).stdout.strip()
    code = parse_qs(urlsplit(link).query)["code"][0]
    with urllib.request.urlopen(link) as page:  # opening the link asks first
        assert page.status == 200
        assert "Set-Cookie" not in page.headers
    opener = urllib.request.build_opener(_NoRedirect)
    form = urllib.parse.urlencode({"code": code}).encode()
    with pytest.raises(urllib.error.HTTPError) as signed_in:
        opener.open(urllib.request.Request(f"{gateway}/ui/login", data=form))
    with signed_in.value as answer:
        assert answer.code == 303
        assert "muster_session=" in answer.headers["Set-Cookie"]
    with pytest.raises(urllib.error.HTTPError) as again:
        opener.open(urllib.request.Request(f"{gateway}/ui/login", data=form))
    with again.value as answer:
        assert answer.code == 400


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def test_muster_ui_refuses_when_an_external_issuer_signs_users_in() -> None:
    result = muster("ui", url="http://127.0.0.1:1", MUSTER_OIDC_ISSUER="https://idp.example")

    assert result.returncode == 2
    assert result.stderr == (
        "muster: the dashboard signs in through https://idp.example "
        "(MUSTER_OIDC_ISSUER): open http://127.0.0.1:1/ui/\n"
    )
