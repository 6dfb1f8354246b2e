-- Catalogue facts an order system needs: a stock-keeping unit (unique when given) and a unit
-- price in minor units (cents). Order lines keep the price they were placed at, so a later
-- price change never rewrites what a customer was charged.
ALTER TABLE commerce.products
    ADD COLUMN sku TEXT CONSTRAINT products_sku_key UNIQUE,
    ADD COLUMN price BIGINT NOT NULL DEFAULT 0
        CONSTRAINT products_price_non_negative CHECK (price >= 0);

ALTER TABLE commerce.order_lines
    ADD COLUMN unit_price BIGINT NOT NULL DEFAULT 0
        CONSTRAINT order_lines_unit_price_non_negative CHECK (unit_price >= 0);
