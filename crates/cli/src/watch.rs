//! `ksp watch` in a terminal: one row per partition with a lag bar, redrawn as lag is read.
//!
//! Keys: `Tab`/`→` next topic, `Shift-Tab`/`←` previous, `p`/space pause (a read in flight
//! is dropped), `r` read now (also while paused), `q`/`Esc`/`Ctrl-C` quit. The terminal is
//! restored on every exit, panics included.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ksp_core::TopicHealth;
use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};
use tokio::sync::mpsc;

use crate::lag::{Reader, Reading, count, rate, seconds, summary, verdict};

/// Width of the lag bar, in cells.
const BAR: usize = 20;

/// What the screen shows; drawn by [`Screen::draw`], changed by keys and reads.
pub(crate) struct Screen {
    group: String,
    topics: Vec<String>,
    selected: usize,
    paused: bool,
    interval: Duration,
    /// The latest health of each topic that reported lag.
    latest: HashMap<String, TopicHealth>,
    reads: u64,
    error: Option<String>,
}

/// What a key asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Nothing,
    /// Read now (paused or not).
    ReadNow,
    /// Paused: a read in flight is dropped, and none starts until resumed or asked for.
    Paused,
    Quit,
}

impl Screen {
    pub(crate) fn new(group: &str, topics: &[String], interval: Duration) -> Self {
        Self {
            group: group.to_owned(),
            topics: topics.to_vec(),
            selected: 0,
            paused: false,
            interval,
            latest: HashMap::new(),
            reads: 0,
            error: None,
        }
    }

    /// Takes in one read (or why it failed).
    pub(crate) fn update(&mut self, read: anyhow::Result<Reading>) {
        self.reads += 1;
        match read {
            Ok(reading) => {
                self.error = None;
                for (topic, health) in reading {
                    match health {
                        Some(health) => {
                            self.latest.insert(topic, health);
                        }
                        None => {
                            self.latest.remove(&topic);
                        }
                    }
                }
            }
            Err(e) => self.error = Some(format!("{e:#}")),
        }
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }

    pub(crate) fn key(&mut self, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::Nothing;
        }
        let topics = self.topics.len().max(1);
        match key.code {
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Action::Quit,
            KeyCode::Char('q') | KeyCode::Esc => Action::Quit,
            KeyCode::Tab | KeyCode::Right | KeyCode::Char('l') => {
                self.selected = (self.selected + 1) % topics;
                Action::Nothing
            }
            KeyCode::BackTab | KeyCode::Left | KeyCode::Char('h') => {
                self.selected = (self.selected + topics - 1) % topics;
                Action::Nothing
            }
            KeyCode::Char('p' | ' ') => {
                self.paused = !self.paused;
                if self.paused {
                    Action::Paused
                } else {
                    Action::ReadNow
                }
            }
            KeyCode::Char('r') => Action::ReadNow,
            _ => Action::Nothing,
        }
    }

    pub(crate) fn draw(&self, frame: &mut Frame<'_>) {
        let [tabs, header, body, footer] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .areas(frame.area());

        let mut spans = vec![Span::styled(" ksp watch ", Style::new().reversed())];
        for (i, topic) in self.topics.iter().enumerate() {
            spans.push(Span::raw(" "));
            let style = if i == self.selected {
                Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
            } else {
                Style::new().fg(Color::DarkGray)
            };
            spans.push(Span::styled(topic.as_str(), style));
        }
        frame.render_widget(Line::from(spans), tabs);

        let topic = self.topics.get(self.selected);
        let health = topic.and_then(|t| self.latest.get(t));
        let status = match (&self.error, health, topic) {
            (Some(error), _, _) => Line::styled(format!("error: {error}"), Color::Red),
            (None, Some(health), _) => Line::from(summary(&self.group, health)),
            (None, None, Some(topic)) if self.reads > 0 => {
                Line::from(format!("topic {topic}: no lag reported"))
            }
            _ => Line::from("reading lag…"),
        };
        frame.render_widget(status, header);

        if let Some(health) = health {
            frame.render_widget(table(health), body);
        }

        let state = if self.paused {
            Span::styled(" PAUSED ", Style::new().reversed().fg(Color::Yellow))
        } else {
            Span::raw(format!(
                " every {} ",
                humantime::format_duration(self.interval)
            ))
        };
        let footer_line = Line::from(vec![
            state,
            Span::raw(format!(
                "· read {} times · tab/←→ topic · p pause · r read now · q quit",
                self.reads
            )),
        ]);
        frame.render_widget(Paragraph::new(footer_line), footer);
    }
}

/// A bar of `fraction` × [`BAR`] cells, in eighths.
fn bar(fraction: f64) -> String {
    const EIGHTHS: [char; 8] = ['▏', '▎', '▍', '▌', '▋', '▊', '▉', '█'];
    let eighths = (fraction.clamp(0.0, 1.0) * (BAR * 8) as f64).round() as usize;
    let mut out = "█".repeat(eighths / 8);
    if let Some(part) = (eighths % 8).checked_sub(1) {
        out.push(EIGHTHS[part]);
    }
    out
}

fn table(health: &TopicHealth) -> Table<'static> {
    let max_lag = health
        .partitions()
        .iter()
        .filter_map(|p| p.lag.lag)
        .max()
        .unwrap_or(0);
    // Share of recent traffic: each partition's measured arrival rate over the topic's.
    let arrivals: Vec<Option<f64>> = health
        .partitions()
        .iter()
        .map(|p| p.lag.rates.and_then(|r| r.arrival_rate))
        .collect();
    let total: f64 = arrivals.iter().flatten().sum();
    let planned = health.keyless_shares();
    let rows =
        health
            .partitions()
            .iter()
            .zip(arrivals)
            .zip(planned)
            .map(|((p, arrival), planned)| {
                let rates = p.lag.rates.unwrap_or_default();
                let (word, good) = verdict(p);
                let color = if good { Color::Green } else { Color::Red };
                let fraction = match p.lag.lag {
                    Some(lag) if max_lag > 0 => lag as f64 / max_lag as f64,
                    _ => 0.0,
                };
                let traffic = match arrival {
                    Some(a) if total > 0.0 => format!("{:.0}%", a / total * 100.0),
                    _ => "-".to_owned(),
                };
                Row::new(vec![
                    Cell::from(p.partition.to_string()),
                    Cell::from(bar(fraction)).style(Style::new().fg(color)),
                    Cell::from(count(p.lag.lag)),
                    Cell::from(seconds(rates.time_lag)),
                    Cell::from(rate(rates.capacity)),
                    Cell::from(traffic),
                    Cell::from(format!("{:.0}%", planned * 100.0)),
                    Cell::from(format!("{:.2}", p.score)),
                    Cell::from(word).style(Style::new().fg(color)),
                ])
            });
    Table::new(
        rows,
        [
            Constraint::Length(9),
            Constraint::Length(BAR as u16),
            Constraint::Length(10),
            Constraint::Length(9),
            Constraint::Length(10),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(5),
            Constraint::Length(9),
        ],
    )
    .header(
        Row::new([
            "partition",
            "backlog",
            "lag",
            "time-lag",
            "capacity/s",
            "traffic",
            "planned",
            "score",
            "health",
        ])
        .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .block(Block::bordered())
}

/// Runs the terminal view until a quit key or Ctrl-C.
pub(crate) async fn run(reader: Arc<Reader>, interval: Duration) -> anyhow::Result<()> {
    let mut terminal = match ratatui::try_init() {
        Ok(terminal) => terminal,
        Err(e) => {
            // Raw mode may be on already.
            let _ = ratatui::try_restore();
            return Err(e.into());
        }
    };
    let result = event_loop(&mut terminal, reader, interval).await;
    ratatui::try_restore()?;
    result
}

async fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    reader: Arc<Reader>,
    interval: Duration,
) -> anyhow::Result<()> {
    let mut screen = Screen::new(reader.group(), reader.topics(), interval);
    let (keys, mut events) = mpsc::channel(16);
    let stop = Arc::new(AtomicBool::new(false));
    let input = {
        let stop = stop.clone();
        // crossterm's reads block: they get a thread of their own.
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match event::poll(Duration::from_millis(100)) {
                    Ok(true) => match event::read() {
                        Ok(event) => {
                            if keys.blocking_send(event).is_err() {
                                break;
                            }
                        }
                        Err(_) => break,
                    },
                    Ok(false) => {}
                    Err(_) => break,
                }
            }
        })
    };
    let start = || {
        let reader = reader.clone();
        Some(tokio::spawn(async move { reader.read().await }))
    };
    let mut reading: Option<tokio::task::JoinHandle<anyhow::Result<Reading>>> = start();
    let mut next = tokio::time::Instant::now() + interval;
    // `r` pressed while a read was in flight: read again as soon as it is done.
    let mut again = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let result = loop {
        if let Err(e) = terminal.draw(|frame| screen.draw(frame)) {
            break Err(e.into());
        }
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Key(key)) => match screen.key(key) {
                    Action::Quit => break Ok(()),
                    Action::ReadNow if reading.is_some() => again = true,
                    Action::ReadNow => reading = start(),
                    Action::Paused => {
                        if let Some(read) = reading.take() {
                            read.abort();
                        }
                        again = false;
                    }
                    Action::Nothing => {}
                },
                // A resize (or anything else) redraws.
                Some(_) => {}
                None => break Ok(()),
            },
            read = async { reading.as_mut().expect("guarded").await }, if reading.is_some() => {
                reading = None;
                screen.update(read.unwrap_or_else(|e| Err(anyhow::anyhow!("the read failed: {e}"))));
                next = tokio::time::Instant::now() + interval;
                if std::mem::take(&mut again) {
                    reading = start();
                }
            }
            () = tokio::time::sleep_until(next), if reading.is_none() && !screen.is_paused() => {
                reading = start();
            }
            _ = &mut ctrl_c => break Ok(()),
        }
    };
    stop.store(true, Ordering::Relaxed);
    if let Some(reading) = reading {
        reading.abort();
    }
    // Dropping the receiver frees an input thread blocked on a full channel; otherwise it
    // notices `stop` within one poll.
    drop(events);
    let _ = input.join();
    result
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use ksp_core::{ConsumerState, PartitionHealth, PartitionLag, PartitionRates};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;

    fn partition(
        partition: i32,
        lag: i64,
        capacity: f64,
        arrival: f64,
        healthy: bool,
    ) -> PartitionHealth {
        let mut lag = PartitionLag::from_offsets(partition, Some(1_000), None, 1_000 + lag);
        lag.rates = Some(
            PartitionRates::new()
                .with_capacity(capacity)
                .with_drain_rate(capacity.min(arrival))
                .with_arrival_rate(arrival)
                .with_time_lag(Duration::from_secs_f64(
                    lag.lag.unwrap_or(0) as f64 / capacity,
                ))
                .with_state(ConsumerState::Draining),
        );
        PartitionHealth::new(lag, if healthy { 0.9 } else { 0.1 }, healthy)
    }

    /// A topic of four partitions, partition 2 far behind.
    fn orders() -> TopicHealth {
        TopicHealth::new(
            "orders",
            SystemTime::now(),
            vec![
                partition(0, 100, 500.0, 300.0, true),
                partition(1, 50, 500.0, 300.0, true),
                partition(2, 4_000, 100.0, 100.0, false),
                partition(3, 0, 500.0, 300.0, true),
            ],
        )
    }

    fn render(screen: &Screen) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(100, 12)).unwrap();
        terminal.draw(|frame| screen.draw(frame)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        (0..buffer.area.height)
            .map(|y| {
                (0..buffer.area.width)
                    .map(|x| buffer[(x, y)].symbol())
                    .collect::<String>()
            })
            .collect()
    }

    fn row<'a>(lines: &'a [String], partition: &str) -> &'a str {
        lines
            .iter()
            .find(|l| l.trim_start_matches('│').split_whitespace().next() == Some(partition))
            .unwrap_or_else(|| panic!("no row for partition {partition}:\n{}", lines.join("\n")))
    }

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    /// A screen of two topics after one read: `orders` as above, `payments` without lag.
    fn two_topics() -> Screen {
        let mut screen = Screen::new(
            "g",
            &["orders".into(), "payments".into()],
            Duration::from_secs(2),
        );
        screen.update(Ok(vec![
            ("orders".into(), Some(orders())),
            ("payments".into(), None),
        ]));
        screen
    }

    #[test]
    fn a_frame_shows_each_partition_with_its_lag_bar_share_and_verdict() {
        let screen = two_topics();
        let lines = render(&screen);
        let text = lines.join("\n");
        assert!(
            lines[0].contains("orders") && lines[0].contains("payments"),
            "{text}"
        );
        assert!(text.contains("3 of 4 partitions routable"), "{text}");
        assert!(
            text.contains("traffic") && text.contains("time-lag"),
            "{text}"
        );
        // The hot partition: a full bar, its lag, 40 s to drain, 10 % of the traffic, HOT.
        let hot = row(&lines, "2");
        assert!(hot.contains(&"█".repeat(BAR)), "{hot}");
        assert!(
            hot.contains("4000") && hot.contains("40.0s") && hot.contains("10%"),
            "{hot}"
        );
        assert!(hot.contains("HOT"), "{hot}");
        // A partition with 1/40 of that lag: half a cell of bar.
        let cool = row(&lines, "0");
        assert!(cool.contains('▌') && !cool.contains('█'), "{cool}");
        assert!(cool.contains("healthy") && cool.contains("30%"), "{cool}");
        assert!(row(&lines, "3").contains("healthy"), "{text}");
        // The cells carry the verdict's colour.
        let mut terminal = Terminal::new(TestBackend::new(100, 12)).unwrap();
        terminal.draw(|frame| screen.draw(frame)).unwrap();
        let buffer = terminal.backend().buffer();
        let y = lines.iter().position(|l| l.contains("HOT")).unwrap() as u16;
        let x = lines[y as usize]
            .find("HOT")
            .map(|b| lines[y as usize][..b].chars().count())
            .unwrap() as u16;
        assert_eq!(buffer[(x, y)].fg, Color::Red);
        assert!(text.contains("read 1 times"), "{text}");
    }

    #[test]
    fn keys_switch_topic_pause_and_quit() {
        let mut screen = two_topics();
        assert_eq!(screen.key(key(KeyCode::Tab)), Action::Nothing);
        let text = render(&screen).join("\n");
        assert!(text.contains("topic payments: no lag reported"), "{text}");
        assert_eq!(screen.key(key(KeyCode::Left)), Action::Nothing);
        assert!(
            render(&screen)
                .join("\n")
                .contains("3 of 4 partitions routable")
        );
        assert_eq!(screen.key(key(KeyCode::Char('p'))), Action::Paused);
        assert!(screen.is_paused());
        assert!(render(&screen).join("\n").contains("PAUSED"));
        assert_eq!(screen.key(key(KeyCode::Char(' '))), Action::ReadNow);
        assert!(!screen.is_paused());
        assert_eq!(screen.key(key(KeyCode::Char('r'))), Action::ReadNow);
        assert_eq!(screen.key(key(KeyCode::Char('q'))), Action::Quit);
        assert_eq!(screen.key(key(KeyCode::Esc)), Action::Quit);
        assert_eq!(
            screen.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Action::Quit
        );
    }

    #[test]
    fn a_failed_read_is_shown_and_the_last_health_kept() {
        let mut screen = Screen::new("g", &["orders".into()], Duration::from_secs(2));
        let lines = render(&screen);
        assert!(lines.join("\n").contains("reading lag…"));
        screen.update(Ok(vec![("orders".into(), Some(orders()))]));
        screen.update(Err(anyhow::anyhow!("broker down")));
        let lines = render(&screen);
        let text = lines.join("\n");
        assert!(text.contains("error: broker down"), "{text}");
        assert!(row(&lines, "2").contains("HOT"), "{text}");
    }

    #[test]
    fn bars_are_measured_in_eighths() {
        assert_eq!(bar(0.0), "");
        assert_eq!(bar(1.0), "█".repeat(BAR));
        assert_eq!(bar(0.5), "█".repeat(BAR / 2));
        assert_eq!(bar(1.0 / 160.0), "▏");
        assert!(bar(f64::NAN).chars().count() <= BAR);
    }
}
