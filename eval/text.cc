#include "eval/text.h"

#include "base/file.h"

namespace kvlab {

StatusOr<std::string> read_eval_text(const std::string& path) {
  KVLAB_ASSIGN_OR_RETURN(std::string text, read_file_text(path));
  if (text.find_first_not_of(" \t\r\n") == std::string::npos) {
    return invalid_argument("text file '" + path + "' is empty");
  }
  return text;
}

std::vector<std::string> split_paragraphs(const std::string& text, int max_paragraphs) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size() && (max_paragraphs < 0 || int(out.size()) < max_paragraphs)) {
    size_t end = text.find("\n\n", start);
    if (end == std::string::npos) end = text.size();
    std::string p = text.substr(start, end - start);
    const size_t a = p.find_first_not_of(" \t\r\n");
    if (a != std::string::npos) {
      const size_t b = p.find_last_not_of(" \t\r\n");
      out.push_back(p.substr(a, b - a + 1));
    }
    if (end == text.size()) break;
    start = end + 2;
  }
  return out;
}

StatusOr<std::vector<std::vector<int32_t>>> make_windows(const std::vector<int32_t>& tokens, int32_t bos,
                                                         int context, int windows) {
  const int64_t need = int64_t(windows) * (context - 1);
  if (int64_t(tokens.size()) < need) {
    return invalid_argument("the text has " + std::to_string(tokens.size()) + " tokens; " + std::to_string(windows) +
                            " windows of " + std::to_string(context) + " need " + std::to_string(need));
  }
  std::vector<std::vector<int32_t>> out(windows);
  for (int w = 0; w < windows; ++w) {
    out[w].push_back(bos);
    const auto first = tokens.begin() + int64_t(w) * (context - 1);
    out[w].insert(out[w].end(), first, first + (context - 1));
  }
  return out;
}

StatusOr<std::vector<std::vector<int32_t>>> make_copy_windows(const std::vector<int32_t>& tokens, int32_t bos,
                                                              int passage, int distance, int windows) {
  const int64_t stride = int64_t(passage) + distance, need = int64_t(windows) * stride;
  if (int64_t(tokens.size()) < need) {
    return invalid_argument("the text has " + std::to_string(tokens.size()) + " tokens; " + std::to_string(windows) +
                            " retrieval windows of " + std::to_string(passage) + " + " + std::to_string(distance) +
                            " tokens need " + std::to_string(need));
  }
  std::vector<std::vector<int32_t>> out(windows);
  for (int w = 0; w < windows; ++w) {
    const auto first = tokens.begin() + int64_t(w) * stride;
    out[w].push_back(bos);
    out[w].insert(out[w].end(), first, first + stride);
    out[w].insert(out[w].end(), first, first + passage);
  }
  return out;
}

StatusOr<std::string> select_lines(const std::string& text, int first, int last) {
  std::string out;
  int line = 1;
  size_t at = 0;
  while (at < text.size() && (last == 0 || line <= last)) {
    size_t end = text.find('\n', at);
    if (end == std::string::npos) end = text.size();
    if (line >= first) out.append(text, at, end - at + 1);  // append clamps at the end of text
    at = end + 1;
    ++line;
  }
  if (out.empty()) return invalid_argument("no text in lines " + std::to_string(first) + "-" + std::to_string(last));
  return out;
}

}  // namespace kvlab
