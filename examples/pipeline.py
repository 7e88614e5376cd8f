"""map_concurrent inside an ordinary reactivex pipeline, in input order, with a bound."""

from __future__ import annotations

import hashlib

import reactivex
from reactivex import operators as ops

from rxpool import operators as rops


def digest(n: int) -> str:
    data = str(n).encode() * 10_000
    return hashlib.sha256(data).hexdigest()[:12]


def main() -> None:
    digests = (
        reactivex.range(1, 21)
        .pipe(
            rops.map_concurrent(digest, 4, ordered=True),  # at most 4 at once, input order kept
            ops.buffer_with_count(5),
            ops.map(lambda chunk: " ".join(chunk)),
        )
        .pipe(ops.to_list())
        .run()
    )
    for line in digests:
        print(line)


if __name__ == "__main__":
    main()

# Expected output: four lines of five 12-hex-digit digests, for 1..20 in order.
