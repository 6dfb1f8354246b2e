-- Announces every increase of a product's available stock (a receipt, a cancellation, an
-- adjustment upwards) on channel `commerce_stock`, with the product id as payload, once the
-- transaction commits. The batching strategy's sold-out fast path listens: it rejects orders
-- for a product it saw sold out without asking the database, until this says stock came back
-- (from any instance). Decrements, the hot path, do not fire it (the WHEN clause is checked
-- before the function is called).
CREATE FUNCTION commerce.notify_stock_increase() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('commerce_stock', NEW.id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER products_stock_increase
    AFTER UPDATE OF available ON commerce.products
    FOR EACH ROW WHEN (NEW.available > OLD.available)
    EXECUTE FUNCTION commerce.notify_stock_increase();
