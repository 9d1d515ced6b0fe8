"""CSV parser speed and memory: lines per second and the peak allocation for one large invoice."""

from __future__ import annotations

import time
import tracemalloc

from services.ingester.csv_parser import parse_invoice_csv


def synthetic_csv(lines: int) -> str:
    head = "product,group_description,description,hours,start,end,USD,project_name,category\n"
    rows = []
    for i in range(lines):
        if i % 20 == 19:
            rows.append(f"Taxes,,GST (10%),,2026-04-01 00:00:00 +0000,2026-04-30 23:59:59 +0000,$1.{i % 100:02d},,iaas")
        else:
            rows.append(
                f"Droplets,,web-{i:05d} (s-1vcpu-1gb),720,2026-04-01 00:00:00 +0000,"
                f'2026-05-01 00:00:00 +0000,"$1,{i % 1000:03d}.{i % 100:02d}",proj,iaas'
            )
    return head + "\n".join(rows) + "\n"


def parser_bench(lines: int = 20_000, rounds: int = 5) -> dict[str, float]:
    text = synthetic_csv(lines)
    parse_invoice_csv(text)  # warm-up
    t0 = time.perf_counter()
    for _ in range(rounds):
        parsed = parse_invoice_csv(text)
    elapsed = time.perf_counter() - t0
    assert len(parsed.lines) == lines
    tracemalloc.start()
    parse_invoice_csv(text)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "lines": lines,
        "lines_per_s": round(lines * rounds / elapsed),
        "peak_mib_per_invoice": round(peak / 2**20, 1),
        "csv_mib": round(len(text.encode()) / 2**20, 2),
    }
