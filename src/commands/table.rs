//! Left-aligned columns for human output.

use std::borrow::Cow;
use std::fmt::{Display, Write};

/// A table whose cells live in one buffer: a row costs its text and two
/// numbers per cell, not an allocation per cell (`status` over 10,000
/// migrations builds 40,000 of them).
pub struct Table {
    text: String,
    /// Per cell, in row order: where its text ends in `text`, and how wide
    /// it shows (colour codes take no room).
    cells: Vec<(usize, usize)>,
    columns: usize,
}

impl Table {
    /// A table with these column headings as its first row.
    pub fn new(headings: &[&str]) -> Table {
        let mut table = Table::bare(headings.len());
        for heading in headings {
            table.cell(heading);
        }
        table
    }

    /// A table of this many columns, without headings.
    pub fn bare(columns: usize) -> Table {
        Table {
            text: String::new(),
            cells: Vec::new(),
            columns: columns.max(1),
        }
    }

    /// Appends the next cell; rows fill left to right.
    pub fn cell(&mut self, value: impl Display) -> &mut Table {
        let start = self.text.len();
        // Writing to a `String` cannot fail.
        let _ = write!(self.text, "{value}");
        let width = self.text[start..].chars().count();
        self.cells.push((self.text.len(), width));
        self
    }

    /// The rows, each line ended by a newline; every column but the last
    /// padded to its widest cell and two spaces, no trailing blanks.
    pub fn render(&self) -> String {
        let columns = self.columns;
        let mut widths = vec![0; columns];
        for (i, &(_, width)) in self.cells.iter().enumerate() {
            widths[i % columns] = widths[i % columns].max(width);
        }
        let mut out = String::with_capacity(self.text.len() + self.cells.len() * 4);
        let mut start = 0;
        for row in self.cells.chunks(columns) {
            push_line(
                &mut out,
                &widths,
                row.iter().map(|&(end, width)| {
                    let text = &self.text[start..end];
                    start = end;
                    (text, width)
                }),
            );
        }
        out
    }
}

/// Appends one line of cells (text, width shown): each cell but the last
/// padded to its column's width and two spaces, no trailing blanks, a
/// newline.
fn push_line<'t>(
    out: &mut String,
    widths: &[usize],
    cells: impl Iterator<Item = (&'t str, usize)>,
) {
    let line_start = out.len();
    for (column, (text, width)) in cells.enumerate() {
        out.push_str(text);
        if column + 1 < widths.len() {
            out.extend(std::iter::repeat_n(' ', widths[column] - width + 2));
        }
    }
    let kept = out[line_start..].trim_end().len();
    out.truncate(line_start + kept);
    out.push('\n');
}

/// One cell of a [`Streamed`] table: its text, and how wide it shows.
pub struct Cell<'a> {
    text: Cow<'a, str>,
    width: usize,
}

impl<'a> Cell<'a> {
    pub fn new(text: impl Into<Cow<'a, str>>) -> Cell<'a> {
        let text = text.into();
        let width = text.chars().count();
        Cell { text, width }
    }

    /// A cell shown as `painted` and as wide as `plain`.
    pub fn painted(plain: &str, painted: String) -> Cell<'a> {
        Cell {
            width: plain.chars().count(),
            text: painted.into(),
        }
    }
}

/// A table too long to hold, laid out like [`Table`] in two passes over
/// its rows: the first measures the columns, the second writes the lines
/// out a chunk at a time. `status` over 10,000 migrations would otherwise
/// hold its cells, then its whole output, beside the files and history.
/// Each row must show the same cells in both passes.
pub struct Streamed<const N: usize> {
    headings: [&'static str; N],
    widths: [usize; N],
}

/// How much of a [`Streamed`] table's output is gathered before it is
/// written: a write per chunk, not per line.
const CHUNK: usize = 64 * 1024;

impl<const N: usize> Streamed<N> {
    pub fn new(headings: [&'static str; N]) -> Streamed<N> {
        Streamed {
            headings,
            widths: headings.map(|h| h.chars().count()),
        }
    }

    /// The first pass: one row's cells.
    pub fn measure(&mut self, row: &[Cell; N]) {
        for (width, cell) in self.widths.iter_mut().zip(row) {
            *width = (*width).max(cell.width);
        }
    }

    /// The second pass: the headings, then a row for each item, handed to
    /// `emit` in chunks of whole lines. `row` and `emit` share `out` (the
    /// printer), which `row` reads and `emit` writes to.
    pub fn write<'r, O, T>(
        &self,
        out: &mut O,
        items: impl Iterator<Item = T>,
        row: impl Fn(&O, &T) -> [Cell<'r>; N],
        mut emit: impl FnMut(&mut O, &str),
    ) {
        let mut chunk = String::with_capacity(CHUNK + 256);
        let headings = self.headings.iter().map(|h| (*h, h.chars().count()));
        push_line(&mut chunk, &self.widths, headings);
        for item in items {
            let cells = row(out, &item);
            push_line(
                &mut chunk,
                &self.widths,
                cells.iter().map(|c| (&*c.text, c.width)),
            );
            if chunk.len() >= CHUNK {
                emit(out, &chunk);
                chunk.clear();
            }
        }
        if !chunk.is_empty() {
            emit(out, &chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_to_the_widest_cell_and_lines_have_no_trailing_blanks() {
        let mut table = Table::new(&["VERSION", "NAME", "AT"]);
        table.cell(1).cell("init").cell("");
        table.cell(20).cell("añadir").cell("ok");
        assert_eq!(
            table.render(),
            "VERSION  NAME    AT\n\
             1        init\n\
             20       añadir  ok\n"
        );
    }

    #[test]
    fn a_bare_table_has_only_its_rows() {
        let mut table = Table::bare(2);
        table.cell("owner").cell("ci").cell("token").cell(7);
        table.cell("").cell("");
        assert_eq!(table.render(), "owner  ci\ntoken  7\n\n");
        assert_eq!(Table::bare(2).render(), "");
    }

    #[test]
    fn a_streamed_table_lays_out_like_a_held_one_in_chunks_of_whole_lines() {
        type Row = (u64, String, &'static str);
        let rows: Vec<Row> = (1..=3000u64)
            .map(|v| {
                let name = format!("añadir_{}", "x".repeat((v % 13) as usize));
                (v * 7, name, if v % 3 == 0 { "ok" } else { "" })
            })
            .collect();
        let mut held = Table::new(&["VERSION", "NAME", "STATE"]);
        for (version, name, state) in &rows {
            held.cell(version).cell(name).cell(state);
        }

        // `out` says whether to paint, as the printer does.
        fn cells<'r>(paint: &bool, &&(version, ref name, state): &&'r Row) -> [Cell<'r>; 3] {
            let shown = match *paint && !state.is_empty() {
                true => format!("\x1b[32m{state}\x1b[0m"),
                false => state.to_string(),
            };
            [
                Cell::new(version.to_string()),
                Cell::new(name.as_str()),
                Cell::painted(state, shown),
            ]
        }
        let mut streamed = Streamed::new(["VERSION", "NAME", "STATE"]);
        for row in &rows {
            streamed.measure(&cells(&true, &row));
        }
        for mut paint in [false, true] {
            let mut chunks = Vec::new();
            streamed.write(&mut paint, rows.iter(), cells, |_, chunk| {
                chunks.push(chunk.to_string())
            });
            assert!(chunks.len() > 1, "{} chunks", chunks.len());
            assert!(chunks
                .iter()
                .all(|c| c.ends_with('\n') && c.len() < CHUNK + 256));
            let whole = chunks.concat();
            let mut expected = held.render();
            if paint {
                expected = expected.replace(" ok\n", " \x1b[32mok\x1b[0m\n");
            }
            assert_eq!(whole, expected);
        }
    }
}
