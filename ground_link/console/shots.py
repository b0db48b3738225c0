"""Screenshots of the console for the docs: runs the demo with the console, then drives headless
Chromium (the OS's chromium and chromedriver, through selenium from the dev extra).

    python -m ground_link.console.shots [OUT_DIR]                    # default docs/console
    python -m ground_link.console.shots [OUT_DIR] --constellation    # constellation.png

Writes operator.png (an alert's popup with its chip open), baku.png and astana.png (the two
partner logins of the demo), login.png; with --constellation, constellation.png (the full
constellation scenario after its run: satellite 2's fire alert with its chip open).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(pred, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Exception:  # noqa: BLE001 - the page may be between loads
            pass
        time.sleep(0.2)
    raise TimeoutError(what)


def _browser(size: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={size}",
              "--hide-scrollbars"):
        opts.add_argument(a)
    opts.binary_location = shutil.which("chromium") or "chromium"
    return webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))


def _login(d, base: str, name: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    d.get(base + "/login")
    d.find_element(By.ID, "name").send_keys(name)
    d.find_element(By.ID, "password").send_keys(password)
    d.find_element(By.ID, "login-button").click()
    _wait(lambda: d.execute_script("return !!(window.consoleState && window.consoleState.me)"), 20, "page")
    _wait(lambda: d.execute_script("return document.getElementById('map').classList.contains('basemap-ready')"),
          20, "base map")
    time.sleep(1.5)


def _run(scenario: str, run_dir: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "payload_sim.hil", str(REPO / "payload_sim/scenarios" / scenario),
                             "--run-dir", str(run_dir), "--quiet", "--console-stay", "--set",
                             f"ground.console_port={port}"], cwd=REPO, stdout=subprocess.DEVNULL)


def _fire_alert_with_chip(d, satellite: int | None = None) -> int:
    return d.execute_script(
        "const S = window.consoleState; return Array.from(S.alerts.values()).filter(a => a.class === 'fire' && "
        "(arguments[0] === null || a.satellite_id === arguments[0]) && "
        "S.chipsByDetection.get(a.key)).map(a => a.id)[0]", satellite)


def main(argv: list[str] | None = None) -> int:
    from selenium.webdriver.common.by import By

    args = list(sys.argv[1:] if argv is None else argv)
    constellation = "--constellation" in args
    args = [a for a in args if a != "--constellation"]
    out = Path((args or ["docs/console"])[0])
    out.mkdir(parents=True, exist_ok=True)
    run_dir = REPO / "runs" / f"console-shots-{time.strftime('%Y%m%d-%H%M%S')}"
    port = _port()
    base = f"http://127.0.0.1:{port}"
    # the constellation: the full scenario (about 2 minutes), in CI's browser window size
    scenario, size, satellite, shot = (("constellation.toml", "1400,900", 2, "constellation.png") if constellation
                                       else ("demo.toml", "1500,950", None, "operator.png"))
    hil = _run(scenario, run_dir, port)
    d = _browser(size)
    try:
        _wait(lambda: (run_dir / "summary.json").exists(), 400, f"the {scenario} run")
        print(json.loads((run_dir / "summary.json").read_text())["alerts"], "alerts", file=sys.stderr)
        if not constellation:
            d.get(base + "/login")
            d.find_element(By.ID, "name").send_keys("operator")
            d.save_screenshot(str(out / "login.png"))
        _login(d, base, "operator", "operator-demo")
        alert = _fire_alert_with_chip(d, satellite)
        d.find_element(By.CSS_SELECTOR, f'tr[data-alert-id="{alert}"]').click()
        time.sleep(1.5)
        d.save_screenshot(str(out / shot))
        for name in () if constellation else ("baku", "astana"):
            d.find_element(By.ID, "logout").click()
            _wait(lambda: d.current_url.endswith("/login"), 10, "login page")
            _login(d, base, name, f"{name}-demo")
            d.save_screenshot(str(out / f"{name}.png"))
    finally:
        d.quit()
        hil.send_signal(signal.SIGINT)
        hil.wait(60)
    print(f"screenshots in {out}; run folder {run_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
