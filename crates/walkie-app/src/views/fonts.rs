//! Fonts for names in any script: egui's own fonts cover Latin, Greek and Cyrillic, so the
//! app adds the first CJK font the system has (Debian's fonts-wqy-microhei, which the install
//! script adds, or Noto CJK) after them. Without one, such characters show as boxes.

use eframe::egui::{
    self, FontData, FontFamily, FontInsert, InsertFontFamily, epaint::text::FontPriority,
};

/// Where Debian and Ubuntu put fonts with Chinese, Japanese and Korean glyphs.
const CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
];

/// Adds the first CJK font found as a fallback of both families; which one, if any.
pub fn install_fallbacks(ctx: &egui::Context) -> Option<&'static str> {
    let (path, bytes) = CANDIDATES
        .iter()
        .find_map(|p| std::fs::read(p).ok().map(|b| (*p, b)))?;
    let families = [FontFamily::Proportional, FontFamily::Monospace]
        .into_iter()
        .map(|family| InsertFontFamily {
            family,
            priority: FontPriority::Lowest,
        })
        .collect();
    ctx.add_font(FontInsert::new(
        "cjk-fallback",
        FontData::from_owned(bytes),
        families,
    ));
    Some(path)
}
