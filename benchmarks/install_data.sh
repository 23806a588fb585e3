#!/usr/bin/env bash
# Installs the Debian data packages that benchmarks/quality.py uses (WordNet, Fashion-MNIST), where apt is available.
set -euo pipefail
if ! command -v apt-get >/dev/null; then
  echo "no apt-get here: the benchmark will skip WordNet and Fashion-MNIST and say so" >&2
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
$sudo apt-get install -y -qq wordnet-base dataset-fashion-mnist
