#!/usr/bin/env bash
# Installs the Debian packages building and testing catalog-stream needs, when they are missing:
# a C toolchain, cmake and zlib for rdkafka's vendored librdkafka, a Java 17 JDK and Maven for the
# Kafka broker and the Kafka Streams oracle (javac), Python for SecantusDB and moto, Prometheus, curl.
set -euo pipefail

PACKAGES=(build-essential pkg-config cmake zlib1g-dev libssl-dev curl
    python3 python3-venv openjdk-17-jdk-headless maven prometheus)

missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
        missing+=("$package")
done
# A JDK or Maven installed outside Debian (as on the development images) counts too.
if command -v java >/dev/null && command -v javac >/dev/null; then
    missing=("${missing[@]/openjdk-17-jdk-headless/}")
fi
if command -v mvn >/dev/null; then missing=("${missing[@]/maven/}"); fi
if command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null; then
    missing=("${missing[@]/python3-venv/}")
    missing=("${missing[@]/python3/}")
fi
read -r -a missing <<<"${missing[*]}"

if ((${#missing[@]} == 0)); then exit 0; fi
echo "[system-deps] installing: ${missing[*]}" >&2
if [[ $(id -u) -ne 0 ]]; then
    echo "[system-deps] not root: run 'sudo apt-get install -y ${missing[*]}'" >&2
    exit 1
fi
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
