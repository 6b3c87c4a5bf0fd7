"""Deterministic business documents for the demo and tests to upload to vector stores.

``documents(seed, n)`` gives ``n`` (filename, text) pairs on five topics (refund policy, shipping,
warranty, onboarding, security), of varied length: short notes of a hundred-odd words, policies of
several hundred words, and handbooks of several thousand tokens that chunk into many chunks.
Pure: the same seed and count give the same documents, with no IO.
"""

from __future__ import annotations

import random

__all__ = ["TOPICS", "documents"]

TOPICS: dict[str, dict[str, list[str]]] = {
    "refund_policy": {
        "title": ["Refund Policy", "Returns and Refunds", "Refund Handbook"],
        "thing": ["unused items", "digital subscriptions", "annual plans", "damaged goods", "gift cards",
                  "clearance items", "custom orders", "bundled products"],
        "actor": ["the customer", "the support agent", "the billing team", "the store manager"],
        "sentence": [
            "Refund requests for {thing} must be submitted within {n} days of purchase.",
            "{Actor} confirms the original payment method before a refund is issued.",
            "Refunds for {thing} are credited to the original card within {n} business days.",
            "A restocking fee of {p} percent applies to {thing} returned without the original packaging.",
            "Partial refunds are available for {thing} when {actor} documents the reason.",
            "Chargebacks opened before a refund request are reviewed by {actor} within {n} days.",
            "Store credit may be offered instead of a refund for {thing}.",
            "The refund window for {thing} is extended to {n} days during the holiday season.",
            "Every refund above {m} dollars needs approval from {actor}.",
        ],
    },
    "shipping": {
        "title": ["Shipping Guide", "Delivery Options", "Shipping and Logistics Manual"],
        "thing": ["standard parcels", "oversized freight", "international orders", "express shipments",
                  "hazardous materials", "backordered items", "pallet deliveries", "same-day orders"],
        "actor": ["the carrier", "the warehouse team", "the logistics coordinator", "the customer"],
        "sentence": [
            "Orders of {thing} placed before {h} pm ship the same business day.",
            "{Actor} provides a tracking number for {thing} within {n} hours of dispatch.",
            "Delivery of {thing} to remote regions can take up to {n} business days.",
            "Shipping is free for orders above {m} dollars, except for {thing}.",
            "Customs duties on {thing} are paid by {actor} at delivery.",
            "Lost parcels are investigated by {actor} after {n} days without a tracking update.",
            "{Thing} are packed with reinforced boxes and insured up to {m} dollars.",
            "Address changes for {thing} are accepted until {actor} prints the label.",
            "Weekend delivery for {thing} costs an extra {p} percent of the shipping fee.",
        ],
    },
    "warranty": {
        "title": ["Warranty Terms", "Limited Warranty", "Warranty Service Handbook"],
        "thing": ["laptops", "batteries", "power adapters", "displays", "keyboards", "refurbished devices",
                  "accessories", "extended protection plans"],
        "actor": ["the repair center", "the customer", "the warranty desk", "an authorised technician"],
        "sentence": [
            "The limited warranty covers {thing} against manufacturing defects for {n} months.",
            "{Actor} needs the serial number and proof of purchase to open a warranty claim for {thing}.",
            "Accidental damage to {thing} is not covered unless a protection plan was purchased.",
            "Replacement {thing} carry the rest of the original warranty or {n} days, whichever is longer.",
            "Warranty repairs on {thing} are completed by {actor} within {n} business days.",
            "Batteries that retain less than {p} percent of their capacity qualify for replacement.",
            "Opening {thing} without {actor} present voids the warranty.",
            "Shipping costs for warranty service above {m} dollars are reimbursed.",
            "{Actor} may refurbish {thing} instead of replacing them when the defect is minor.",
        ],
    },
    "onboarding": {
        "title": ["Employee Onboarding", "New Hire Guide", "Onboarding Playbook"],
        "thing": ["laptop setup", "benefits enrolment", "security training", "payroll forms",
                  "team introductions", "access requests", "mentor meetings", "first-week goals"],
        "actor": ["the new hire", "the hiring manager", "the people team", "the assigned mentor"],
        "sentence": [
            "{Actor} completes {thing} during the first {n} days of employment.",
            "The onboarding checklist lists {thing} as a required step before the first review.",
            "{Actor} schedules {thing} within the first week and records the outcome.",
            "New hires receive {thing} materials {n} days before their start date.",
            "Questions about {thing} go to {actor} through the onboarding channel.",
            "The {n}-day review covers {thing} and progress against first-quarter goals.",
            "Remote employees get {thing} support from {actor} by video call.",
            "Completion of {thing} is tracked in the HR system and reported to {actor}.",
            "A stipend of {m} dollars covers home office equipment alongside {thing}.",
        ],
    },
    "security": {
        "title": ["Security Policy", "Information Security Standard", "Security Operations Handbook"],
        "thing": ["passwords", "customer data", "production access", "API keys", "laptops", "vendor accounts",
                  "audit logs", "backup systems"],
        "actor": ["the security team", "every employee", "the on-call engineer",
                  "the data protection officer"],
        "sentence": [
            "{Thing} must be rotated at least every {n} days.",
            "{Actor} reports suspected incidents involving {thing} within {h} hours.",
            "Access to {thing} requires multi-factor authentication and approval by {actor}.",
            "{Thing} are encrypted at rest with keys reviewed every {n} months.",
            "Audit records of {thing} are retained for {n} months and reviewed by {actor}.",
            "Phishing simulations run every {n} weeks and cover {thing}.",
            "Vendors handling {thing} complete a security review before any contract above {m} dollars.",
            "Lost devices holding {thing} are wiped remotely by {actor}.",
            "At least {p} percent of staff must finish training on {thing} each quarter.",
        ],
    },
}

_LENGTHS = (("short", 60, 160), ("medium", 350, 900), ("long", 2300, 4200))
"""Length classes in words (a long handbook runs to several thousand o200k tokens)."""


def _sentence(rng: random.Random, vocab: dict[str, list[str]]) -> str:
    template = rng.choice(vocab["sentence"])
    thing = rng.choice(vocab["thing"])
    actor = rng.choice(vocab["actor"])
    text = template.format(
        thing=thing, Thing=thing[:1].upper() + thing[1:], actor=actor, Actor=actor[:1].upper() + actor[1:],
        n=rng.choice([3, 5, 7, 10, 14, 30, 45, 60, 90]), m=rng.choice([50, 100, 250, 500, 1000]),
        p=rng.choice([5, 10, 15, 20, 25, 80]), h=rng.choice([2, 4, 12, 24]),
    )
    return text


def _document(rng: random.Random, topic: str, words: int) -> str:
    vocab = TOPICS[topic]
    lines = [f"# {rng.choice(vocab['title'])}", ""]
    count = 0
    section = 1
    while count < words:
        lines.append(f"## Section {section}")
        section += 1
        for _ in range(rng.randint(2, 4)):
            para = " ".join(_sentence(rng, vocab) for _ in range(rng.randint(3, 6)))
            count += len(para.split())
            lines.extend([para, ""])
            if count >= words:
                break
    return "\n".join(lines).rstrip() + "\n"


def documents(seed: int, n: int) -> list[tuple[str, str]]:
    """``n`` deterministic (filename, text) documents; every third one (from the third) is long."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"corpus:{seed}")
    topics = sorted(TOPICS)
    docs = []
    for i in range(n):
        topic = topics[(i + seed) % len(topics)]
        kind, lo, hi = _LENGTHS[i % len(_LENGTHS)]
        text = _document(rng, topic, rng.randint(lo, hi))
        docs.append((f"{topic}_{kind}_{i:02d}.md", text))
    return docs
