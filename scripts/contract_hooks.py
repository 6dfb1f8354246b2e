"""Schemathesis hooks of scripts/contract.sh (loaded through SCHEMATHESIS_HOOKS).

POST /api/v1/orders refuses an order naming a product twice (422 `validation_failed`), as its
schema says in words: JSON Schema cannot say "unique by `product_id`" (`uniqueItems` compares
whole lines, and the document sets it too). Generated bodies that name a product twice are
dropped, so a schema-valid order is one the server can accept.
"""

import schemathesis


def _product_key(value):
    # 1 and 1.0 are the same product: the server reads integral numbers as integers.
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
        return ("number", int(value))
    return ("other", repr(value))


@schemathesis.hook.apply_to(method="POST", path="/api/v1/orders")
def filter_body(context, body):
    items = body.get("items") if isinstance(body, dict) else None
    if not isinstance(items, list):
        return True
    products = [_product_key(item["product_id"]) for item in items if isinstance(item, dict) and "product_id" in item]
    return len(products) == len(set(products))
