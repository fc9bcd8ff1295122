#!/usr/bin/env bash
# The layering rule of src/ (docs/DESIGN.md, "Architecture"), checked on the source text:
#
#   tower, bin, testing  ->  lib  ->  store/ (the façade)  ->  engine/  ->
#       {idempotency/, ratelimit/, status.rs}  ->  error.rs, clock.rs
#
# Nothing below the façade names it (`crate::store`, `crate::Store`, `crate::StoreBuilder`),
# and nothing below the engines names an engine. The one deliberate upward type is
# `idempotency::Lease`: it holds the `Store` it resolves through (src/idempotency/lease.rs), and
# `Error` hands a refused lease back (src/error.rs).
# Test-only code (`#[cfg(test)]` modules) may use `crate::testing` helpers. Exits 1 and lists the
# lines that break the rule.
set -euo pipefail
cd "$(dirname "$0")/.."

status=0
check() {
    local what=$1 pattern=$2 allowed=${ALLOWED:-'^$'}
    shift 2
    local found
    found=$(grep -rnE "$pattern" "$@" --include='*.rs' | grep -vE '^[^:]+:[0-9]+:\s*//' |
        grep -vE "$allowed" || true)
    if [ -n "$found" ]; then
        echo "layering: $what"
        echo "$found"
        status=1
    fi
}

check "engines, rules and leaves name the façade (store/)" \
    'crate::(store\b|Store\b|StoreBuilder\b)' \
    src/engine src/ratelimit src/status.rs src/error.rs src/clock.rs src/observe.rs \
    $(find src/idempotency -name '*.rs' ! -name lease.rs)
check "the rules and leaves name an engine" \
    'crate::engine\b' \
    src/ratelimit src/idempotency src/status.rs src/error.rs src/clock.rs
check "the façade reaches into an engine past its mod.rs" \
    'crate::engine::(embedded|postgres|redis)::[a-z_]+::' \
    src/store src/lib.rs
ALLOWED='crate::idempotency::Lease\b[^,{]*$' check \
    "the ground floor (error.rs, clock.rs) names what stands above it (but Lease)" \
    'crate::(engine|store|ratelimit|tower|testing|status|observe|idempotency)\b' \
    src/error.rs src/clock.rs
check "library code names the HTTP layers or the CLI" \
    'crate::(tower|bin)\b' \
    src/engine src/store src/ratelimit src/idempotency src/status.rs src/error.rs src/clock.rs

if [ "$status" -eq 0 ]; then
    echo "layering: every import goes down"
fi
exit "$status"
