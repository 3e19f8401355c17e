//! The demo catalogue loaded by `storefront demo-data`. Idempotent: products are matched by
//! slug; names, descriptions, prices and images are brought up to date, and stock is topped up
//! to the demo level, never lowered below what is there.

use sqlx::PgPool;

struct DemoProduct {
    slug: &'static str,
    name: &'static str,
    description: &'static str,
    price_cents: i32,
    stock: i32,
    image_alt: &'static str,
}

const CATALOGUE: &[DemoProduct] = &[
    DemoProduct {
        slug: "ceramic-mug",
        name: "Ceramic Mug",
        description: "A 350 ml stoneware mug with a glazed terracotta finish. Dishwasher safe.",
        price_cents: 1290,
        stock: 40,
        image_alt: "A terracotta-red ceramic mug with a round handle",
    },
    DemoProduct {
        slug: "canvas-tote",
        name: "Canvas Tote Bag",
        description: "Heavy cotton canvas with long handles; carries a week of groceries.",
        price_cents: 1890,
        stock: 25,
        image_alt: "A sand-coloured canvas tote bag with dark handles",
    },
    DemoProduct {
        slug: "notebook-a5",
        name: "A5 Dot-Grid Notebook",
        description: "192 pages of 100 g/m² paper, lay-flat binding, a yellow ribbon marker.",
        price_cents: 990,
        stock: 60,
        image_alt: "A dark blue notebook with a yellow ribbon and a dot grid",
    },
    DemoProduct {
        slug: "fountain-pen",
        name: "Fountain Pen",
        description: "A steel nib, a piston converter and a cap that posts firmly.",
        price_cents: 3490,
        stock: 10,
        image_alt: "A purple fountain pen with a gold nib",
    },
    DemoProduct {
        slug: "desk-lamp",
        name: "LED Desk Lamp",
        description: "Warm-white LED on an adjustable arm, 3 brightness levels, USB-C powered.",
        price_cents: 4990,
        stock: 8,
        image_alt: "A grey desk lamp with an amber shade on an angled arm",
    },
    DemoProduct {
        slug: "wool-socks",
        name: "Merino Wool Socks",
        description: "Soft, warm and odour-resistant. One pair, sizes 39–42.",
        price_cents: 1490,
        stock: 50,
        image_alt: "A burgundy wool sock with a pink cuff",
    },
    DemoProduct {
        slug: "water-bottle",
        name: "Steel Water Bottle",
        description: "750 ml, double-walled: cold for 24 hours, hot for 12.",
        price_cents: 2290,
        stock: 30,
        image_alt: "A teal steel water bottle with a dark cap",
    },
    DemoProduct {
        slug: "coffee-beans",
        name: "Single-Origin Coffee Beans (250 g)",
        description: "Washed Ethiopian beans, medium roast: notes of apricot and black tea.",
        price_cents: 1190,
        stock: 100,
        image_alt: "Two brown coffee beans",
    },
    DemoProduct {
        slug: "plant-pot",
        name: "Terracotta Plant Pot",
        description: "14 cm, unglazed, with a drainage hole and a saucer.",
        price_cents: 1590,
        stock: 20,
        image_alt: "A terracotta pot with a green plant",
    },
    DemoProduct {
        slug: "headphones",
        name: "Wireless Headphones",
        description: "Over-ear, 30 hours of battery, folds flat into its case.",
        price_cents: 8990,
        stock: 5,
        image_alt: "Dark over-ear headphones",
    },
    DemoProduct {
        slug: "backpack",
        name: "Everyday Backpack",
        description: "20 litres, a padded laptop sleeve and a water-repellent finish.",
        price_cents: 6490,
        stock: 12,
        image_alt: "A blue backpack with a front pocket",
    },
    DemoProduct {
        slug: "soy-candle",
        name: "Soy Candle",
        description: "Hand-poured soy wax with cedar and orange; burns for about 40 hours.",
        price_cents: 1390,
        stock: 3,
        image_alt: "A cream candle in a jar with a lit flame",
    },
];

/// Loads (or brings up to date) the demo catalogue; returns how many products it holds.
pub async fn load(pool: &PgPool) -> Result<usize, sqlx::Error> {
    let mut tx = crate::db::begin(pool).await?;
    for p in CATALOGUE {
        crate::db::query(
            r#"
            INSERT INTO products (slug, name, description, price_cents, currency, image_path,
                                  image_alt, stock)
            VALUES ($1, $2, $3, $4, 'EUR', $5, $6, $7)
            ON CONFLICT ON CONSTRAINT products_slug_key DO UPDATE
            SET name = EXCLUDED.name, description = EXCLUDED.description,
                price_cents = EXCLUDED.price_cents, currency = EXCLUDED.currency,
                image_path = EXCLUDED.image_path, image_alt = EXCLUDED.image_alt,
                stock = GREATEST(products.stock, EXCLUDED.stock), active = true
            "#,
        )
        .bind(p.slug)
        .bind(p.name)
        .bind(p.description)
        .bind(p.price_cents)
        .bind(format!("img/products/{}.svg", p.slug))
        .bind(p.image_alt)
        .bind(p.stock)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(CATALOGUE.len())
}
