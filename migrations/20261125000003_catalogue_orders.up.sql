-- The catalogue and the orders placed from it. The catalogue's content is loaded by
-- `storefront demo-data` (or by the shop's own tooling), never by a migration.

CREATE TABLE products (
    product_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The product page's address: /products/{slug}.
    slug        text NOT NULL CHECK (slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$'),
    name        text NOT NULL,
    description text NOT NULL DEFAULT '',
    -- Money in minor units (cents): no floating point anywhere near a price.
    price_cents integer NOT NULL CHECK (price_cents >= 0),
    currency    text NOT NULL DEFAULT 'EUR' CHECK (currency ~ '^[A-Z]{3}$'),
    -- Path under /static, e.g. img/products/mug.svg.
    image_path  text,
    image_alt   text NOT NULL DEFAULT '',
    -- Checkout decrements it inside the order's transaction; it can never go negative.
    stock       integer NOT NULL DEFAULT 0 CHECK (stock >= 0),
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT products_slug_key UNIQUE (slug)
);
CREATE TRIGGER products_updated_at BEFORE UPDATE ON products
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE orders (
    order_id        uuid PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES users ON DELETE RESTRICT,
    -- From the checkout form: the same form submitted twice is the same order.
    idempotency_key uuid NOT NULL,
    status          text NOT NULL DEFAULT 'placed' CHECK (status IN ('placed', 'cancelled')),
    total_cents     bigint NOT NULL CHECK (total_cents >= 0),
    currency        text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT orders_idempotency_key UNIQUE (user_id, idempotency_key)
);
-- "My orders", newest first.
CREATE INDEX orders_user_created_idx ON orders (user_id, created_at DESC);

-- Name and price are copied at checkout: an order shows what was bought at what price, even
-- after the catalogue changes.
CREATE TABLE order_items (
    order_id         uuid NOT NULL REFERENCES orders ON DELETE CASCADE,
    product_id       bigint NOT NULL REFERENCES products ON DELETE RESTRICT,
    name             text NOT NULL,
    unit_price_cents integer NOT NULL CHECK (unit_price_cents >= 0),
    quantity         integer NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, product_id)
);
CREATE INDEX order_items_product_id_idx ON order_items (product_id);
