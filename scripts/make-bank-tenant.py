#!/usr/bin/env python3
"""Builds tenants/bank.json from the Banking77 training split.

Usage: scripts/make-bank-tenant.py BANKING77_DIR [PER_INTENT]

BANKING77_DIR holds train.csv (text,category) and departments.json (department ->
intents). The tenant gets six departments; each intent keeps its first PER_INTENT
(default 4) training messages in file order, so the output is deterministic.
Banking77: Casanueva et al. 2020, "Efficient Intent Detection with Dual Sentence
Encoders", CC BY 4.0.
"""
import csv
import json
import sys
from pathlib import Path

NAMES = {
    "cards": ("Cards", "Card delivery, activation, PINs, lost, stolen or blocked cards, virtual and disposable cards, card acceptance."),
    "payments": ("Payments", "Card payments and cash withdrawals: pending, declined, unrecognised or duplicated charges, fees and refunds."),
    "transfers": ("Transfers", "Bank transfers in and out: pending, failed or declined transfers, beneficiaries, transfer fees and timing."),
    "top_up": ("Top-up", "Adding money to the account by card, bank transfer, cheque or cash: top-up limits, failures, pending and reverted top-ups."),
    "account": ("Account", "Account opening, identity verification, personal details, passcodes, closing the account, terms and general questions."),
    "exchange": ("Exchange", "Currency exchange: rates, exchange fees, holding and converting foreign currencies."),
}
FALLBACK = "account"


def main() -> None:
    source = Path(sys.argv[1])
    per_intent = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    groups = json.loads((source / "departments.json").read_text())
    by_intent: dict[str, list[str]] = {}
    with (source / "train.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            by_intent.setdefault(row["category"], []).append(row["text"].strip())

    departments = []
    for key, intents in groups.items():
        name, description = NAMES[key]
        departments.append({
            "name": name,
            "description": description,
            "examples": [],
            "intents": [
                {"name": intent, "examples": by_intent[intent][:per_intent]}
                for intent in intents
            ],
        })
    tenant = {
        "name": "Demo Bank",
        "fallbackDepartment": NAMES[FALLBACK][0],
        "confidenceThreshold": 0.5,
        "departments": departments,
    }
    out = Path(__file__).resolve().parent.parent / "tenants" / "bank.json"
    out.write_text(json.dumps(tenant, indent=2, ensure_ascii=False) + "\n")
    total = sum(len(i["examples"]) for d in departments for i in d["intents"])
    print(f"wrote {out} with {len(departments)} departments and {total} examples")


if __name__ == "__main__":
    main()
