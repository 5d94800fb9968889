//! Headless Chromium for the tests that look at a page (the status page, TensorBoard): where
//! the browser and playwright-core are (scripts/browser-deps.sh installs them; scripts/test.sh
//! runs it, so CI always has them), and a guard that stops a child process when the test ends.

use std::path::{Path, PathBuf};
use std::process::Child;

/// Kills a child (a browser script and so its Chromium, a server) when dropped, also when the
/// test fails.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a browser script needs: playwright-core's `node_modules` (for `NODE_PATH`) and the
/// Chromium binary (`CHROMIUM` or Debian's `/usr/bin/chromium`).
pub struct Browser {
    /// `.deps/node/node_modules` of the workspace.
    pub node_modules: PathBuf,
    /// The Chromium binary.
    pub chromium: String,
}

/// The browser of the workspace at `workspace`, or None after saying on stderr that `test` is
/// skipped: without the browser there is nothing to drive, and a suite run where it was never
/// installed should say so instead of failing.
pub fn browser(workspace: &Path, test: &str) -> Option<Browser> {
    let node_modules = workspace.join(".deps/node/node_modules");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if node_modules.join("playwright-core").exists() && Path::new(&chromium).exists() {
        return Some(Browser { node_modules, chromium });
    }
    eprintln!(
        "SKIPPED {test}: no headless Chromium ({chromium}) or no playwright-core in {}; run \
         scripts/browser-deps.sh (scripts/test.sh does)",
        node_modules.display()
    );
    None
}
