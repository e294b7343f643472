#!/usr/bin/env bash
# Regenerates docs/page-500.png, docs/page-503.png and docs/page-maintenance.png: the pages a
# browser shows, rendered by headless Chromium (`apt-get install -y chromium`) in tests/pages.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
TOWER_5XX_SCREENSHOTS=docs cargo test --all-features --test pages -- --nocapture
ls -l docs/page-*.png
