"""Screenshots of the console for the docs: runs the demo with the console, then drives headless
Chromium (the OS's chromium and chromedriver, through selenium from the dev extra).

    python -m ground_link.console.shots [OUT_DIR]      # default docs/console

Writes operator.png (an alert's popup with its chip open), baku.png and astana.png (the two
partner logins of the demo), login.png.
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


def main(argv: list[str] | None = None) -> int:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    out = Path((argv or sys.argv[1:] or ["docs/console"])[0])
    out.mkdir(parents=True, exist_ok=True)
    run_dir = REPO / "runs" / f"console-shots-{time.strftime('%Y%m%d-%H%M%S')}"
    port = _port()
    hil = subprocess.Popen([sys.executable, "-m", "payload_sim.hil", str(REPO / "payload_sim/scenarios/demo.toml"),
                            "--run-dir", str(run_dir), "--quiet", "--console-stay", "--set",
                            f"ground.console_port={port}"], cwd=REPO, stdout=subprocess.DEVNULL)
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1500,950",
              "--hide-scrollbars"):
        opts.add_argument(a)
    opts.binary_location = shutil.which("chromium") or "chromium"
    d = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: (run_dir / "summary.json").exists(), 300, "the demo run")
        print(json.loads((run_dir / "summary.json").read_text())["alerts"], "alerts", file=sys.stderr)

        def login(name: str, password: str) -> None:
            d.get(base + "/login")
            d.find_element(By.ID, "name").send_keys(name)
            d.find_element(By.ID, "password").send_keys(password)
            d.find_element(By.ID, "login-button").click()
            _wait(lambda: d.execute_script("return !!(window.consoleState && window.consoleState.me)"), 20, "page")
            _wait(lambda: d.execute_script("return document.getElementById('map').classList.contains('basemap-ready')"),
                  20, "base map")
            time.sleep(1.5)

        d.get(base + "/login")
        d.find_element(By.ID, "name").send_keys("operator")
        d.save_screenshot(str(out / "login.png"))
        login("operator", "operator-demo")
        alert = d.execute_script(
            "const S = window.consoleState; return Array.from(S.alerts.values()).filter(a => a.class === 'fire' && "
            "S.chipsByDetection.get(a.product_id)).map(a => a.id)[0]")
        d.find_element(By.CSS_SELECTOR, f'tr[data-alert-id="{alert}"]').click()
        time.sleep(1.5)
        d.save_screenshot(str(out / "operator.png"))
        for name in ("baku", "astana"):
            d.find_element(By.ID, "logout").click()
            _wait(lambda: d.current_url.endswith("/login"), 10, "login page")
            login(name, f"{name}-demo")
            d.save_screenshot(str(out / f"{name}.png"))
    finally:
        d.quit()
        hil.send_signal(signal.SIGINT)
        hil.wait(20)
    print(f"screenshots in {out}; run folder {run_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
