//! Desktop notifications: one for each message that arrives while the window is not
//! focused (conversations can be muted). Shown by the desktop's notification service over
//! D-Bus, off the engine's thread; a desktop without one shows nothing, and that is logged,
//! never a failure.

/// Shows a notification with `title` and `body`, in the background.
pub fn show(title: &str, body: &str) {
    let (title, body) = (title.to_string(), body.to_string());
    std::thread::spawn(move || {
        let shown = notify_rust::Notification::new()
            .appname("walkie")
            .summary(&title)
            .body(&body)
            .timeout(notify_rust::Timeout::Milliseconds(6_000))
            .show();
        if let Err(e) = shown {
            tracing::debug!("no desktop notification: {e}");
        }
    });
}
