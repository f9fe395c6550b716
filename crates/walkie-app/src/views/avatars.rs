//! Avatars on screen: each person's 64 px picture as a texture, made once per picture (the
//! relay's tag says when it changed), drawn round-cornered beside clips, contacts and people
//! online; someone without one gets a circle with their initial. A screen reader (and the UI
//! tests) read "avatar of NAME".

use std::collections::HashMap;

use eframe::egui::{self, Color32, Sense, TextureHandle, Ui, vec2};

use crate::engine::PeopleView;

/// Textures made so far, by user and picture tag.
#[derive(Default)]
pub struct Avatars {
    textures: HashMap<String, (String, TextureHandle)>,
}

impl Avatars {
    fn texture(
        &mut self,
        ctx: &egui::Context,
        people: &PeopleView,
        user: &str,
    ) -> Option<TextureHandle> {
        let pixels = people.persons.get(user)?.avatar.as_ref()?;
        if let Some((tag, tex)) = self.textures.get(user)
            && *tag == pixels.tag
        {
            return Some(tex.clone());
        }
        let image = egui::ColorImage::from_rgba_unmultiplied(pixels.size, &pixels.rgba);
        let tex = ctx.load_texture(
            format!("avatar-{user}"),
            image,
            egui::TextureOptions::LINEAR,
        );
        self.textures
            .insert(user.to_string(), (pixels.tag.clone(), tex.clone()));
        Some(tex)
    }

    /// Draws `user`'s avatar `side` points wide.
    pub fn show(
        &mut self,
        ui: &mut Ui,
        people: &PeopleView,
        user: &str,
        side: f32,
    ) -> egui::Response {
        let (rect, resp) = ui.allocate_exact_size(vec2(side, side), Sense::hover());
        match self.texture(ui.ctx(), people, user) {
            Some(tex) => {
                egui::Image::new(&tex)
                    .corner_radius(side / 4.0)
                    .paint_at(ui, rect);
                let label = format!("avatar of {user}");
                resp.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Image, true, &label));
            }
            None => {
                let hue = user
                    .bytes()
                    .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
                let color = Color32::from_rgb(
                    90 + (hue % 120) as u8,
                    90 + (hue / 7 % 120) as u8,
                    90 + (hue / 49 % 120) as u8,
                );
                ui.painter().circle_filled(rect.center(), side / 2.0, color);
                let initial = people
                    .persons
                    .get(user)
                    .and_then(|p| p.display.as_deref())
                    .unwrap_or(user)
                    .chars()
                    .next()
                    .unwrap_or('?');
                ui.painter().text(
                    rect.center(),
                    egui::Align2::CENTER_CENTER,
                    initial.to_uppercase(),
                    egui::FontId::proportional(side * 0.5),
                    Color32::WHITE,
                );
            }
        }
        resp
    }
}
