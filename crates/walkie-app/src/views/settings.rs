//! Settings: input and output device, a microphone test (hear yourself through the codec),
//! noise suppression, bitrate. Every change applies at once and is saved.

use eframe::egui::{self, RichText, Ui};

use super::widgets;
use crate::engine::{AppSettings, BITRATE_RANGE, Command, Engine, Snapshot};
use walkie_media::jitter::JitterStats;
use walkie_proto::clip::ClipId;

/// Whether the settings panel is open.
#[derive(Default)]
pub struct SettingsView {
    /// Shown beside the conversation.
    pub open: bool,
}

fn device_combo(ui: &mut Ui, label: &str, value: &mut Option<String>, names: &[String]) -> bool {
    let shown = value.clone().unwrap_or_else(|| "System default".into());
    let mut changed = false;
    egui::ComboBox::from_label(label)
        .selected_text(shown)
        .width(200.0)
        .show_ui(ui, |ui| {
            changed |= ui.selectable_value(value, None, "System default").changed();
            for n in names {
                changed |= ui.selectable_value(value, Some(n.clone()), n).changed();
            }
            changed |= ui
                .selectable_value(value, Some("null".into()), "None (null)")
                .changed();
        });
    changed
}

/// One line per live clip heard, newest first: what the jitter buffer did with its packets.
pub fn network_lines(stats: &[(ClipId, JitterStats)]) -> Vec<String> {
    stats
        .iter()
        .rev()
        .map(|(id, s)| {
            let short: String = id.to_string().chars().take(8).collect();
            format!(
                "{short}: {} played, {} late, {} concealed, {} from FEC, {} dropped",
                s.played,
                s.late,
                s.skipped + s.expanded,
                s.recovered,
                s.drained + s.overflowed
            )
        })
        .collect()
}

/// Draws the settings panel.
pub fn show(ui: &mut Ui, snap: &Snapshot, engine: &Engine, _view: &mut SettingsView) {
    ui.heading("Settings");
    ui.add_space(6.0);
    let mut s: AppSettings = snap.settings.clone();
    let mut changed = false;
    changed |= device_combo(
        ui,
        "Input device",
        &mut s.input_device,
        &snap.devices.inputs,
    );
    changed |= device_combo(
        ui,
        "Output device",
        &mut s.output_device,
        &snap.devices.outputs,
    );
    if let Some(e) = &snap.devices.error {
        ui.label(
            RichText::new(format!("Cannot list devices: {e}"))
                .small()
                .weak(),
        );
    }
    if ui.button("Refresh devices").clicked() {
        engine.send(Command::RefreshDevices);
    }
    ui.add_space(6.0);
    changed |= ui
        .checkbox(&mut s.noise_suppression, "Noise suppression")
        .changed();
    changed |= ui
        .checkbox(
            &mut s.autoplay_everywhere,
            "Play new clips of every conversation (not only the one on screen)",
        )
        .changed();
    let mut kbps = s.bitrate / 1000;
    let slider = egui::Slider::new(&mut kbps, BITRATE_RANGE.0 / 1000..=BITRATE_RANGE.1 / 1000)
        .suffix(" kb/s")
        .text("Bitrate");
    if ui.add(slider).changed() {
        s.bitrate = kbps * 1000;
        changed = true;
    }
    if changed {
        engine.send(Command::SetSettings(s));
    }
    ui.add_space(10.0);
    ui.collapsing("Network (live clips)", |ui| {
        let lines = network_lines(&snap.live_stats);
        if lines.is_empty() {
            ui.label(RichText::new("No live clip heard yet.").weak());
        }
        for line in lines {
            ui.label(RichText::new(line).small().monospace());
        }
    });
    ui.add_space(10.0);
    ui.label(RichText::new("Microphone test").strong());
    match &snap.mic_test {
        Some(meter) => {
            ui.horizontal(|ui| {
                ui.label(widgets::clock_text(meter.elapsed()));
                widgets::level_meter(ui, meter.level(), 160.0);
            });
            ui.label("Speak now: you hear yourself as others will.");
            ui.ctx()
                .request_repaint_after(std::time::Duration::from_millis(50));
        }
        None => {
            if ui
                .button("Test microphone")
                .on_hover_text("Records 3 seconds and plays them back")
                .clicked()
            {
                engine.send(Command::MicTest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_view_lists_the_latest_clip_first() {
        let stats = |played, recovered| JitterStats {
            played,
            recovered,
            late: 2,
            skipped: 1,
            expanded: 3,
            drained: 4,
            overflowed: 1,
            stretched: 2,
        };
        let lines = network_lines(&[
            (ClipId([0x11; 16]), stats(100, 0)),
            (ClipId([0xab; 16]), stats(250, 7)),
        ]);
        assert_eq!(
            lines,
            vec![
                "abababab: 250 played, 2 late, 4 concealed, 7 from FEC, 5 dropped",
                "11111111: 100 played, 2 late, 4 concealed, 0 from FEC, 5 dropped",
            ]
        );
        assert!(network_lines(&[]).is_empty());
    }
}
