"""A listener's port held by another process stops ``huren serve`` and ``huren demo``
before anything starts, naming the port — also when that process shares its port with
SO_REUSEPORT, as the workers of another ``huren serve --workers`` do: the kernel would
otherwise hand each sender's connection to either process, and a hospital's messages
would go into two databases."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from huren.cli import main as cli_main
from huren.cli.main import app
from huren.cli.server import PortTaken, require_free_ports
from huren.config import Settings
from tests.e2e.live import free_port

runner = CliRunner()


@pytest.fixture(params=[True, False], ids=["shared", "exclusive"])
def held(request: pytest.FixtureRequest) -> Iterator[int]:
    """A port another process listens on, with or without SO_REUSEPORT."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if request.param:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_a_taken_mllp_port_is_named_and_the_free_ones_are_not(
    settings: Settings, held: int
) -> None:
    s = settings.model_copy(update={"start_mllp": True, "mllp_port": held})
    with pytest.raises(PortTaken) as err:
        require_free_ports(s, "127.0.0.1", free_port())
    assert f"HL7 MLLP（HUREN_MLLP_PORT） 127.0.0.1:{held}" in str(err.value)
    assert "HTTP" not in str(err.value)


def test_free_ports_pass(settings: Settings) -> None:
    s = settings.model_copy(
        update={
            "start_mllp": True,
            "mllp_port": free_port(),
            "start_dicom": True,
            "dicom_port": free_port(),
        }
    )
    require_free_ports(s, "127.0.0.1", free_port())


def test_serve_stops_before_starting_when_its_mllp_port_is_taken(
    held: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HUREN_DATABASE_URL", f"sqlite:///{tmp_path / 'h.db'}")
    monkeypatch.setenv("HUREN_MLLP_PORT", str(held))
    monkeypatch.setenv("HUREN_START_DICOM", "false")
    monkeypatch.setattr(cli_main, "get_settings", Settings)  # read from these variables
    r = runner.invoke(app, ["serve", "--port", str(free_port())])
    assert r.exit_code == 2, r.output
    assert f"127.0.0.1:{held}" in r.output
    assert "端口已被其他进程占用" in r.output


def test_demo_stops_before_making_its_data_when_its_mllp_port_is_taken(
    held: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HUREN_MLLP_PORT", str(held))
    monkeypatch.setenv("HUREN_START_DICOM", "false")
    r = runner.invoke(app, ["demo", "--dir", str(tmp_path / "demo"), "--port", str(free_port())])
    assert r.exit_code == 2, r.output
    assert f"127.0.0.1:{held}" in r.output
    assert "演示已就绪" not in r.output
    assert not (tmp_path / "demo" / "huren.db").exists()
