// Line charts written as PNG through PLplot (Debian's libplplot, cairo driver).
#pragma once
#include <filesystem>
#include <string>
#include <vector>

namespace dj {

struct PlotSeries {
  std::string name;
  std::vector<double> x, y;  // points with a non-finite or (on log axes) non-positive value are skipped
};

struct PlotSpec {
  std::string title, x_label, y_label;
  bool log_x = false, log_y = false;
  int width = 1000, height = 700;  // pixels
};

// Draws every series with a legend and writes the PNG atomically. Throws dj::Error naming the
// file when nothing can be drawn or the file cannot be written.
void write_line_plot(const std::filesystem::path& png, const PlotSpec& spec, const std::vector<PlotSeries>& series);

}  // namespace dj
