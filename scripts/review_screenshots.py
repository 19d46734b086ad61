"""The review page's screenshots in docs/: the gallery at 800x480 (the Pi's 7" touch screen) and at
1366x768 (a desktop), from the `make demo` session, as the analyser left it.

    make demo && .venv/bin/python scripts/review_screenshots.py [runs/demo/capture.db]

Nothing is reviewed: BCCD cells carry no labels we may assign by hand. The demo session is
UNVALIDATED (BCCD is another lab's microscope), so the page opens on every cell under the red
banner. The PNGs are reduced to a 128-colour palette to stay small in the repository.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from headless import chromium  # scripts/headless.py (this script's folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
SIZES = [(800, 480), (1366, 768)]


def main(db: Path) -> None:
    if not db.is_file():
        sys.exit(f"error: {db}: no such session log (run `make demo` first)")
    from PIL import Image

    cli = str(REPO / ".venv" / "bin" / "edge-bloodcls")
    server = subprocess.Popen(
        [cli, "review", str(db), "--port", "0", "--reviewer", "demo"], stdout=subprocess.PIPE, text=True
    )
    url = server.stdout.readline().split()[1]  # "review http://127.0.0.1:PORT/?token=... (session ..."
    driver = chromium(1366, 768, "--hide-scrollbars")
    try:
        for w, h in SIZES:
            # the viewport itself, not the window: what a 800x480 screen shows
            driver.execute_cdp_cmd(
                "Emulation.setDeviceMetricsOverride", {"width": w, "height": h, "deviceScaleFactor": 1, "mobile": False}
            )
            driver.get(url)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not driver.execute_script(
                "return [...document.querySelectorAll('.tile img[src]')].every(i => i.complete) && "
                "document.querySelectorAll('.tile img[src]').length > 0"
            ):
                time.sleep(0.2)
            out = REPO / "docs" / f"review-{w}x{h}.png"
            driver.save_screenshot(str(out))
            Image.open(out).convert("RGB").quantize(128, dither=Image.Dither.NONE).save(out, optimize=True)
            print(f"{out.relative_to(REPO)}: {out.stat().st_size // 1024} KB")
    finally:
        driver.quit()
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "runs" / "demo" / "capture.db"))
