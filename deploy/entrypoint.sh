#!/bin/sh
# The container's entry point: makes the node key on first start (in the volume), then runs
# the node with the admin endpoint on the container's loopback for the health check.
set -eu
key=/var/lib/wendy/node.key
[ -f "$key" ] || wendy keygen --out "$key" >/dev/null
exec wendy node --key "$key" --admin 127.0.0.1:8484 --events json --log-format json "$@"
