//! People nearby, coarse on purpose: a position becomes a geohash cell of 5 characters
//! (about 4.9 km on a side at the equator, narrower east-west towards the poles) on the
//! user's own machine, and only that cell ever leaves it. Distances between people are
//! between cell centres, rounded to whole kilometres. A small table of places stands in for
//! GPS on desktops.

/// Characters of a geohash cell that is shared.
pub const CELL_CHARS: usize = 5;
/// Farthest distance shown, in kilometres.
pub const NEARBY_KM: f64 = 10.0;

const BASE32: &[u8; 32] = b"0123456789bcdefghjkmnpqrstuvwxyz";

/// Why a position or cell was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlaceError {
    /// Not `LAT,LON` in range, nor a known place.
    #[error(
        "{0:?} is neither LAT,LON (like 48.86,2.35) nor a place this build knows (like Paris); give coordinates"
    )]
    Unknown(String),
    /// Not a cell of [`CELL_CHARS`] geohash characters.
    #[error("{0:?} is not a {CELL_CHARS}-character geohash cell")]
    BadCell(String),
}

/// The cell of `CELL_CHARS` characters that contains a position.
pub fn cell_of(lat: f64, lon: f64) -> String {
    let (mut lat_range, mut lon_range) = ((-90.0, 90.0), (-180.0, 180.0));
    let mut out = String::with_capacity(CELL_CHARS);
    let (mut bits, mut ch, mut even) = (0, 0usize, true);
    while out.len() < CELL_CHARS {
        let (range, value): (&mut (f64, f64), f64) = if even {
            (&mut lon_range, lon)
        } else {
            (&mut lat_range, lat)
        };
        let mid = (range.0 + range.1) / 2.0;
        ch <<= 1;
        if value >= mid {
            ch |= 1;
            range.0 = mid;
        } else {
            range.1 = mid;
        }
        even = !even;
        bits += 1;
        if bits == 5 {
            out.push(char::from(BASE32[ch]));
            bits = 0;
            ch = 0;
        }
    }
    out
}

/// The centre of a cell and its size in degrees (latitude, longitude); `None` if `cell` is
/// not a valid cell.
pub fn cell_center(cell: &str) -> Option<((f64, f64), (f64, f64))> {
    if cell.len() != CELL_CHARS {
        return None;
    }
    let (mut lat_range, mut lon_range) = ((-90.0f64, 90.0f64), (-180.0f64, 180.0f64));
    let mut even = true;
    for b in cell.bytes() {
        let v = BASE32.iter().position(|&c| c == b)?;
        for shift in (0..5).rev() {
            let range = if even { &mut lon_range } else { &mut lat_range };
            let mid = (range.0 + range.1) / 2.0;
            if v >> shift & 1 == 1 {
                range.0 = mid;
            } else {
                range.1 = mid;
            }
            even = !even;
        }
    }
    let center = (
        (lat_range.0 + lat_range.1) / 2.0,
        (lon_range.0 + lon_range.1) / 2.0,
    );
    Some((
        center,
        (lat_range.1 - lat_range.0, lon_range.1 - lon_range.0),
    ))
}

/// Checks a cell sent by a client.
pub fn check_cell(cell: &str) -> Result<(), PlaceError> {
    cell_center(cell)
        .map(|_| ())
        .ok_or_else(|| PlaceError::BadCell(cell.chars().take(16).collect()))
}

/// The cell and every cell whose centre may lie within [`NEARBY_KM`] of its centre (the
/// cell itself first).
pub fn cells_around(cell: &str) -> Vec<String> {
    let Some(((lat, lon), (dlat, dlon))) = cell_center(cell) else {
        return Vec::new();
    };
    let mut out = vec![cell.to_string()];
    // Enough steps of one cell to cover the distance, east-west cells narrowing with latitude.
    let km_lat = dlat * 111.2;
    let km_lon = (dlon * 111.2 * lat.to_radians().cos()).max(0.5);
    let (n_lat, n_lon) = (
        (NEARBY_KM / km_lat).ceil() as i32,
        ((NEARBY_KM / km_lon).ceil() as i32).min(20),
    );
    for i in -n_lat..=n_lat {
        for j in -n_lon..=n_lon {
            let (la, lo) = (lat + f64::from(i) * dlat, lon + f64::from(j) * dlon);
            if !(-90.0..=90.0).contains(&la) {
                continue;
            }
            let lo = (lo + 540.0).rem_euclid(360.0) - 180.0;
            let c = cell_of(la, lo);
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out
}

/// Kilometres between two cells' centres, rounded to whole kilometres.
pub fn km_between(a: &str, b: &str) -> Option<u32> {
    let ((la1, lo1), _) = cell_center(a)?;
    let ((la2, lo2), _) = cell_center(b)?;
    let (p1, p2) = (la1.to_radians(), la2.to_radians());
    let (dp, dl) = ((la2 - la1).to_radians(), (lo2 - lo1).to_radians());
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    Some((2.0 * 6371.0 * h.sqrt().asin()).round() as u32)
}

/// Places that stand in for GPS (city centres), matched without regard to case.
const PLACES: &[(&str, f64, f64)] = &[
    ("amsterdam", 52.37, 4.90),
    ("athens", 37.98, 23.73),
    ("auckland", -36.85, 174.76),
    ("bangkok", 13.76, 100.50),
    ("barcelona", 41.39, 2.17),
    ("beijing", 39.90, 116.41),
    ("berlin", 52.52, 13.40),
    ("bogota", 4.71, -74.07),
    ("boston", 42.36, -71.06),
    ("brussels", 50.85, 4.35),
    ("buenos aires", -34.60, -58.38),
    ("cairo", 30.04, 31.24),
    ("cape town", -33.92, 18.42),
    ("chengdu", 30.57, 104.07),
    ("chicago", 41.88, -87.63),
    ("copenhagen", 55.68, 12.57),
    ("delhi", 28.61, 77.21),
    ("dubai", 25.20, 55.27),
    ("dublin", 53.35, -6.26),
    ("guangzhou", 23.13, 113.26),
    ("hamburg", 53.55, 9.99),
    ("helsinki", 60.17, 24.94),
    ("hong kong", 22.32, 114.17),
    ("istanbul", 41.01, 28.98),
    ("jakarta", -6.21, 106.85),
    ("johannesburg", -26.20, 28.05),
    ("kyiv", 50.45, 30.52),
    ("lagos", 6.52, 3.38),
    ("lima", -12.05, -77.04),
    ("lisbon", 38.72, -9.14),
    ("london", 51.51, -0.13),
    ("los angeles", 34.05, -118.24),
    ("madrid", 40.42, -3.70),
    ("manila", 14.60, 120.98),
    ("melbourne", -37.81, 144.96),
    ("mexico city", 19.43, -99.13),
    ("milan", 45.46, 9.19),
    ("montreal", 45.50, -73.57),
    ("moscow", 55.76, 37.62),
    ("mumbai", 19.08, 72.88),
    ("munich", 48.14, 11.58),
    ("nairobi", -1.29, 36.82),
    ("new york", 40.71, -74.01),
    ("osaka", 34.69, 135.50),
    ("oslo", 59.91, 10.75),
    ("paris", 48.86, 2.35),
    ("prague", 50.08, 14.44),
    ("rome", 41.90, 12.50),
    ("san francisco", 37.77, -122.42),
    ("santiago", -33.45, -70.67),
    ("sao paulo", -23.55, -46.63),
    ("seoul", 37.57, 126.98),
    ("shanghai", 31.23, 121.47),
    ("shenzhen", 22.54, 114.06),
    ("singapore", 1.35, 103.82),
    ("stockholm", 59.33, 18.07),
    ("sydney", -33.87, 151.21),
    ("taipei", 25.03, 121.57),
    ("tokyo", 35.68, 139.69),
    ("toronto", 43.65, -79.38),
    ("vancouver", 49.28, -123.12),
    ("vienna", 48.21, 16.37),
    ("warsaw", 52.23, 21.01),
    ("wuhan", 30.59, 114.31),
    ("zurich", 47.38, 8.54),
];

/// A position from `LAT,LON` or a known place's name.
pub fn parse_place(text: &str) -> Result<(f64, f64), PlaceError> {
    let unknown = || PlaceError::Unknown(text.chars().take(64).collect());
    if let Some((a, b)) = text.split_once(',')
        && let (Ok(lat), Ok(lon)) = (a.trim().parse::<f64>(), b.trim().parse::<f64>())
    {
        return if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon) {
            Ok((lat, lon))
        } else {
            Err(unknown())
        };
    }
    let wanted = text.trim().to_lowercase();
    PLACES
        .iter()
        .find(|(name, ..)| *name == wanted)
        .map(|&(_, lat, lon)| (lat, lon))
        .ok_or_else(unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_standard_geohashes_about_five_km_wide() {
        assert_eq!(
            cell_of(57.64911, 10.40744),
            "u4pru",
            "the reference example"
        );
        assert_eq!(cell_of(48.8584, 2.2945), "u09tu");
        let ((lat, lon), (dlat, dlon)) = cell_center("u09tu").expect("valid");
        assert!((lat - 48.8584).abs() < dlat && (lon - 2.2945).abs() < dlon);
        assert!((dlat * 111.2 - 4.9).abs() < 0.1, "{dlat}");
        assert_eq!(cell_center("u09t"), None);
        assert_eq!(cell_center("u09ta"), None, "a is not a geohash character");
        assert!(check_cell("u09tu").is_ok() && check_cell("../..").is_err());
    }

    #[test]
    fn distances_round_to_kilometres_and_neighbours_cover_ten_km() {
        let eiffel = cell_of(48.8584, 2.2945);
        let notre_dame = cell_of(48.8530, 2.3499);
        assert_ne!(eiffel, notre_dame, "about 4 km apart, in two cells");
        assert_eq!(
            km_between(&eiffel, &notre_dame),
            Some(3),
            "between the cells' centres, whole kilometres"
        );
        assert_eq!(km_between(&eiffel, &eiffel), Some(0));
        let versailles = cell_of(48.8049, 2.1204);
        assert!(km_between(&eiffel, &versailles).is_some_and(|k| k > 10));
        let around = cells_around(&eiffel);
        assert!(around.contains(&notre_dame) && around[0] == eiffel);
        assert!(around.len() >= 9 && around.len() <= 80, "{}", around.len());
        // At the date line the neighbours wrap around.
        assert!(
            cells_around(&cell_of(0.0, 179.99))
                .iter()
                .any(|c| cell_center(c).is_some_and(|((_, lo), _)| lo < 0.0))
        );
    }

    #[test]
    fn places_are_coordinates_or_known_names() {
        assert_eq!(parse_place("48.86, 2.35"), Ok((48.86, 2.35)));
        assert_eq!(parse_place("Paris"), Ok((48.86, 2.35)));
        assert_eq!(parse_place(" new york "), Ok((40.71, -74.01)));
        assert!(parse_place("91,0").is_err());
        assert!(
            parse_place("Atlantis")
                .expect_err("unknown")
                .to_string()
                .contains("give coordinates")
        );
    }
}
