//! The demo's product catalogue: what product-service serves, what recommendations-service
//! recommends from, and the id rules the gateways check before calling either.

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: u32,
    pub name: String,
    pub price: f64,
    pub description: String,
}

/// A product id that cannot be an id at all (as opposed to one we do not have).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdError {
    #[error("product id is empty")]
    Empty,
    #[error("product id must be a positive whole number, got {0:?}")]
    NotANumber(String),
    #[error("product id {0} is out of range")]
    OutOfRange(String),
}

/// Longest id text echoed back in an error, so hostile input is not reflected in full.
const ECHO_LIMIT: usize = 32;

fn echo(raw: &str) -> String {
    raw.chars().take(ECHO_LIMIT).collect()
}

/// Parses a product id from a path segment: ASCII digits only, no sign, at least 1.
pub fn parse_id(raw: &str) -> Result<u32, IdError> {
    if raw.is_empty() {
        return Err(IdError::Empty);
    }
    if !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IdError::NotANumber(echo(raw)));
    }
    match raw.parse::<u32>() {
        Ok(0) | Err(_) => Err(IdError::OutOfRange(echo(raw))),
        Ok(id) => Ok(id),
    }
}

const ITEMS: &[(&str, f64, &str)] = &[
    (
        "Mechanical Keyboard",
        89.99,
        "Tenkeyless keyboard with hot-swappable brown switches",
    ),
    (
        "Wireless Mouse",
        34.50,
        "Ergonomic mouse with a silent scroll wheel",
    ),
    ("27-inch Monitor", 279.00, "1440p IPS panel at 144 Hz"),
    (
        "USB-C Hub",
        45.99,
        "Seven ports including HDMI and Ethernet",
    ),
    (
        "Laptop Stand",
        39.95,
        "Aluminium stand with adjustable height",
    ),
    (
        "Noise-Cancelling Headphones",
        199.00,
        "Over-ear, 30 hours of battery",
    ),
    ("Webcam", 69.00, "1080p camera with a privacy shutter"),
    ("Desk Lamp", 29.99, "LED lamp with warm and cool light"),
    ("Standing Desk", 449.00, "Electric desk with memory presets"),
    ("Office Chair", 329.00, "Mesh back with lumbar support"),
    ("External SSD", 119.00, "1 TB over USB 3.2"),
    (
        "Microphone",
        99.00,
        "USB condenser microphone for calls and podcasts",
    ),
    ("Desk Mat", 19.99, "Large felt mat for keyboard and mouse"),
    (
        "Cable Organizer",
        12.49,
        "Under-desk tray that hides power strips",
    ),
    (
        "Bluetooth Speaker",
        59.00,
        "Water-resistant speaker with 12 hours of play",
    ),
    (
        "Graphics Tablet",
        79.99,
        "Pen tablet with 8192 pressure levels",
    ),
    (
        "Portable Charger",
        49.00,
        "20,000 mAh power bank with fast charging",
    ),
    ("Smart Plug", 15.99, "Wi-Fi plug with energy monitoring"),
    ("Router", 149.00, "Wi-Fi 6 router for the home office"),
    (
        "Docking Station",
        229.00,
        "Thunderbolt dock driving two displays",
    ),
    (
        "Ergonomic Footrest",
        34.00,
        "Tilting footrest with a massage surface",
    ),
    (
        "Monitor Arm",
        89.00,
        "Gas-spring arm for screens up to 32 inches",
    ),
    (
        "Document Camera",
        129.00,
        "Overhead camera for paper and whiteboards",
    ),
    (
        "Label Printer",
        64.99,
        "Thermal printer for shipping labels",
    ),
];

/// The whole catalogue, ids 1..=len.
pub fn products() -> Vec<Product> {
    (1..=ITEMS.len() as u32).filter_map(product).collect()
}

pub fn product(id: u32) -> Option<Product> {
    let index = usize::try_from(id).ok()?.checked_sub(1)?;
    let (name, price, description) = ITEMS.get(index)?;
    Some(Product {
        id,
        name: (*name).into(),
        price: *price,
        description: (*description).into(),
    })
}

/// Products related to `id`: its neighbours in the catalogue, wrapping around.
pub fn related(id: u32, count: usize) -> Option<Vec<Product>> {
    product(id)?;
    let len = ITEMS.len() as u32;
    Some(
        (1..=count as u32)
            .map(|step| (id - 1 + step) % len + 1)
            .filter_map(product)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn catalogue_has_at_least_twenty_products_with_dense_ids() {
        let all = products();
        assert!(all.len() >= 20);
        for (i, p) in all.iter().enumerate() {
            assert_eq!(p.id as usize, i + 1);
        }
        assert!(product(0).is_none());
        assert!(product(all.len() as u32 + 1).is_none());
    }

    #[test]
    fn related_never_includes_the_product_itself() {
        for p in products() {
            let rel = related(p.id, 3).unwrap();
            assert_eq!(rel.len(), 3);
            assert!(rel.iter().all(|r| r.id != p.id));
        }
        assert!(related(999, 3).is_none());
    }

    #[test]
    fn id_rules() {
        assert_eq!(parse_id("7"), Ok(7));
        assert_eq!(parse_id("007"), Ok(7));
        assert_eq!(parse_id(""), Err(IdError::Empty));
        assert!(matches!(parse_id("-1"), Err(IdError::NotANumber(_))));
        assert!(matches!(parse_id("+1"), Err(IdError::NotANumber(_))));
        assert!(matches!(parse_id("1.5"), Err(IdError::NotANumber(_))));
        assert!(matches!(parse_id("abc"), Err(IdError::NotANumber(_))));
        assert!(matches!(parse_id("0"), Err(IdError::OutOfRange(_))));
        assert!(matches!(
            parse_id("12345678901234567890"),
            Err(IdError::OutOfRange(_))
        ));
    }

    proptest! {
        #[test]
        fn parse_id_accepts_exactly_positive_u32_decimal(raw in "\\PC{0,40}") {
            let expected = raw.parse::<u32>().ok().filter(|n| *n > 0 && !raw.starts_with('+'));
            prop_assert_eq!(parse_id(&raw).ok(), expected);
        }

        #[test]
        fn parse_id_round_trips(id in 1u32..) {
            prop_assert_eq!(parse_id(&id.to_string()), Ok(id));
        }
    }
}
