#!/bin/sh
# Container entrypoint for invoicesync.
#
#   <image> run | schedule --every 5m | status | --help ...   ->  invoicesync "$@"
#   <image> sh | python ...                                   ->  that command, as given
#
# Before starting invoicesync it checks that $INVOICESYNC_CONFIG exists (unless --config is
# given): a missing mount is then one clear line and exit 2, the CLI's code for config errors.
# Every branch ends in `exec`, so no shell stays in between and SIGTERM (docker stop, a
# Kubernetes eviction) reaches invoicesync itself, which finishes the current item and exits.
set -eu

case "${1:-}" in
    "" | -* | run | schedule | status | retry | invoices | db) ;;
    *) exec "$@" ;;
esac

config=${INVOICESYNC_CONFIG:-}
for arg; do
    case "$arg" in
        --config | --config=* | -h | --help) config= ;;
    esac
done
if [ -n "$config" ] && [ ! -f "$config" ]; then
    echo "invoicesync: config error: no config file at $config (mount one there, or set INVOICESYNC_CONFIG)" >&2
    exit 2
fi
exec invoicesync "$@"
