// Evaluation text: reading it, cutting it into paragraphs or token windows.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace kvlab {

// The file's text; an empty (or whitespace-only) file is kInvalidArgument.
StatusOr<std::string> read_eval_text(const std::string& path);
// Lines first..last (1-based, inclusive; last 0: to the end) of `text`, newlines kept.
StatusOr<std::string> select_lines(const std::string& text, int first, int last);
// The first `max_paragraphs` (all if < 0) non-empty paragraphs separated by blank lines ("\n\n").
std::vector<std::string> split_paragraphs(const std::string& text, int max_paragraphs);
// `windows` windows of `context` tokens: BOS followed by the next context-1 tokens of `tokens`,
// consecutive and non-overlapping from the start. kInvalidArgument if the text is too short.
StatusOr<std::vector<std::vector<int32_t>>> make_windows(const std::vector<int32_t>& tokens, int32_t bos,
                                                         int context, int windows);
// `windows` copy-retrieval windows (eval/decode_eval.h): BOS, a passage of `passage` tokens, the
// `distance` tokens that follow it, the passage again; window w's passage starts at token
// w * (passage + distance). kInvalidArgument if the text is too short.
StatusOr<std::vector<std::vector<int32_t>>> make_copy_windows(const std::vector<int32_t>& tokens, int32_t bos,
                                                              int passage, int distance, int windows);

}  // namespace kvlab
