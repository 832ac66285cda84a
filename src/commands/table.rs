//! Left-aligned columns for human output.

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

    /// Appends a cell shown as `painted` and as wide as `plain`.
    pub fn painted(&mut self, plain: &str, painted: &str) -> &mut Table {
        self.text.push_str(painted);
        self.cells.push((self.text.len(), plain.chars().count()));
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
        let (mut start, mut line_start) = (0, 0);
        for (i, &(end, width)) in self.cells.iter().enumerate() {
            let column = i % columns;
            out.push_str(&self.text[start..end]);
            start = end;
            if column + 1 < columns {
                out.extend(std::iter::repeat_n(' ', widths[column] - width + 2));
            } else {
                let kept = out[line_start..].trim_end().len();
                out.truncate(line_start + kept);
                out.push('\n');
                line_start = out.len();
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_to_the_widest_cell_and_lines_have_no_trailing_blanks() {
        let mut table = Table::new(&["VERSION", "NAME", "AT"]);
        table.cell(1).cell("init").cell("");
        table
            .cell(20)
            .cell("añadir")
            .painted("ok", "\x1b[32mok\x1b[0m");
        assert_eq!(
            table.render(),
            "VERSION  NAME    AT\n\
             1        init\n\
             20       añadir  \x1b[32mok\x1b[0m\n"
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
}
