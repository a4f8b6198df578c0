// seemoe/data/csv.hpp — a small RFC 4180 CSV reader (and the writer half the generator needs).
//
// read_csv(path) returns a CsvTable: the header row, then every data row with exactly as many
// fields as the header. Supported: fields in double quotes holding commas, doubled quotes ("")
// and line breaks; LF, CRLF or lone CR line endings; a UTF-8 byte-order mark; blank lines
// (skipped). A quote inside an unquoted field is kept as a literal character, as Python's csv
// module does; anything but a comma or a line break after a closing quote is an error.
//
// Convention: errors point at the place in the file as "<file> line L (row R)": L is the physical
// line where the record starts (what an editor shows, header = line 1) and R counts data rows
// from 1 (the header is not a row). CsvTable::where(row) builds the same text for callers that
// find a problem in a field later (a missing image, a bad split name).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "../core/common.hpp"
#include "../io/file.hpp"

namespace seemoe::data {

struct CsvTable {
    std::string source;                          // file name used in error messages
    std::vector<std::string> header;             // column names, in file order
    std::vector<std::vector<std::string>> rows;  // each of header.size() fields
    std::vector<Index> lines;                    // 1-based line where each row starts

    Index num_rows() const { return static_cast<Index>(rows.size()); }
    Index num_columns() const { return static_cast<Index>(header.size()); }

    // Position of the column called `name` (exact match, first one wins), or -1.
    Index find_column(std::string_view name) const {
        for (std::size_t i = 0; i < header.size(); ++i)
            if (header[i] == name) return static_cast<Index>(i);
        return -1;
    }
    // Same, but a missing column is an error that lists the columns the file does have.
    Index column(std::string_view name) const {
        const Index i = find_column(name);
        SEEMOE_CHECK(i >= 0, "[csv] ", source, " has no column \"", name, "\" (columns: ", columns_str(),
                     ")");
        return i;
    }
    const std::string& at(Index row, Index col) const {
        SEEMOE_CHECK(row >= 0 && row < num_rows() && col >= 0 && col < num_columns(), "[csv] ", source,
                     ": cell (", row, ", ", col, ") is outside the table of ", num_rows(), " rows x ",
                     num_columns(), " columns");
        return rows[static_cast<std::size_t>(row)][static_cast<std::size_t>(col)];
    }
    // "captions.csv line 5 (row 4)" for the 0-based data row `row`.
    std::string where(Index row) const {
        const Index line = (row >= 0 && row < num_rows()) ? lines[static_cast<std::size_t>(row)] : 0;
        return detail::concat(source, " line ", line, " (row ", row + 1, ")");
    }
    // "image, caption, split" — for error messages.
    std::string columns_str() const {
        std::string out;
        for (std::size_t i = 0; i < header.size(); ++i) out += (i ? ", \"" : "\"") + header[i] + "\"";
        return out;
    }
};

// Parses CSV text; `source` names it in error messages.
inline CsvTable parse_csv(std::string_view text, const std::string& source = "<memory>") {
    // A UTF-8 byte-order mark (Excel writes one) is not part of the first column's name.
    if (text.size() >= 3 && text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);

    std::vector<std::vector<std::string>> records;
    std::vector<Index> record_lines;
    std::vector<std::string> record;
    std::string field;
    Index line = 1;              // current physical line
    Index record_line = 1;       // line where the current record started
    Index quote_line = 0;        // line where the open quoted field started
    bool field_started = false;  // any character (or quotes) seen in this record yet
    enum class State { field_start, unquoted, quoted, after_quote } state = State::field_start;

    // "line 7 (row 6)", or "line 1 (header)" while the header is being read.
    auto position = [&](Index at_line) {
        return records.empty() ? detail::concat(" line ", at_line, " (header)")
                               : detail::concat(" line ", at_line, " (row ", records.size(), ")");
    };
    auto end_field = [&] {
        record.push_back(std::move(field));
        field.clear();
    };
    auto end_record = [&] {
        end_field();
        // A blank line is a record of one empty, unquoted field: skip it.
        const bool blank = record.size() == 1 && record[0].empty() && !field_started;
        if (!blank) {
            records.push_back(std::move(record));
            record_lines.push_back(record_line);
        }
        record.clear();
        field_started = false;
        state = State::field_start;
    };

    const std::size_t n = text.size();
    for (std::size_t i = 0; i < n; ++i) {
        const char c = text[i];
        if (state == State::quoted) {
            if (c == '"') {
                if (i + 1 < n && text[i + 1] == '"') {
                    field += '"';  // "" inside quotes is one literal quote
                    ++i;
                } else {
                    state = State::after_quote;
                }
            } else {
                if (c == '\n' || (c == '\r' && !(i + 1 < n && text[i + 1] == '\n'))) ++line;
                field += c;  // line breaks inside quotes are kept verbatim
            }
            continue;
        }
        if (c == ',') {
            end_field();
            field_started = true;
            state = State::field_start;
        } else if (c == '\n' || c == '\r') {
            if (c == '\r' && i + 1 < n && text[i + 1] == '\n') ++i;  // CRLF is one line break
            end_record();
            ++line;
            record_line = line;
        } else if (state == State::after_quote) {
            throw Error(detail::concat("[csv] ", source, position(line), ": unexpected character '", c,
                                       "' after a closing quote (a quote inside a quoted field "
                                       "must be doubled: \"\")"));
        } else if (c == '"' && state == State::field_start) {
            state = State::quoted;
            quote_line = line;
            field_started = true;
        } else {
            field += c;  // includes a literal quote in the middle of an unquoted field
            field_started = true;
            state = State::unquoted;
        }
    }
    SEEMOE_CHECK(state != State::quoted, "[csv] ", source, position(quote_line),
                 ": a quoted field is never closed (missing '\"')");
    if (field_started || !field.empty() || !record.empty()) end_record();

    SEEMOE_CHECK(!records.empty(), "[csv] ", source, " is empty: expected a header row");
    CsvTable table;
    table.source = source;
    table.header = std::move(records[0]);
    table.rows.reserve(records.size() - 1);
    table.lines.reserve(records.size() - 1);
    for (std::size_t r = 1; r < records.size(); ++r) {
        SEEMOE_CHECK(records[r].size() == table.header.size(), "[csv] ", source, " line ", record_lines[r],
                     " (row ", r, "): expected ", table.header.size(), " fields like the header, found ",
                     records[r].size());
        table.rows.push_back(std::move(records[r]));
        table.lines.push_back(record_lines[r]);
    }
    return table;
}

// The largest CSV file read_csv reads (a base64 CSV holds every image, so this is generous).
inline constexpr std::uint64_t kMaxCsvBytes = std::uint64_t(1) << 30;

// Reads and parses a CSV file: a regular file of at most kMaxCsvBytes (see io/file.hpp).
inline CsvTable read_csv(const std::string& path) {
    return parse_csv(io::read_file(path, kMaxCsvBytes, "a CSV file", "[csv]"), path);
}

// One field, quoted when it holds a comma, a quote or a line break (quotes doubled), or starts
// with a byte-order mark (which parse_csv would drop at the start of a file).
inline std::string csv_escape(std::string_view field) {
    const bool starts_with_bom = field.substr(0, 3) == "\xEF\xBB\xBF";
    if (field.find_first_of(",\"\r\n") == std::string_view::npos && !starts_with_bom) return std::string(field);
    std::string out = "\"";
    for (char c : field) {
        if (c == '"') out += '"';
        out += c;
    }
    return out + "\"";
}

// One record: escaped fields joined by commas, ending in "\n". A record of one empty field is
// written as "" (an empty line would be read as a blank line and skipped).
inline std::string csv_line(const std::vector<std::string>& fields) {
    if (fields.size() == 1 && fields[0].empty()) return "\"\"\n";
    std::string out;
    for (std::size_t i = 0; i < fields.size(); ++i) {
        if (i) out += ',';
        out += csv_escape(fields[i]);
    }
    return out + "\n";
}

}  // namespace seemoe::data
