#include "trainer/report/plot.h"

#include <plplot.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <string_view>

#include "kernels/core/error.h"
#include "trainer/checkpoint/atomic_write.h"

namespace dj {

namespace {

// PLplot keeps global state per stream; one plot at a time keeps the streams from interleaving.
std::mutex plot_mutex;

// plinit() asks on stdin for a device when the requested one is missing: check first.
bool has_png_driver() {
  constexpr int kMaxDevices = 128;
  const char* menu_storage[kMaxDevices];
  const char* name_storage[kMaxDevices];
  const char** menu = menu_storage;
  const char** names = name_storage;
  int count = kMaxDevices;
  plgDevs(&menu, &names, &count);
  for (PLINT i = 0; i < count; ++i)
    if (std::string_view(names[i]) == "pngcairo") return true;
  return false;
}

double axis_value(double v, bool log) { return log ? std::log10(v) : v; }

bool drawable(double x, double y, const PlotSpec& spec) {
  return std::isfinite(x) && std::isfinite(y) && (!spec.log_x || x > 0) && (!spec.log_y || y > 0);
}

}  // namespace

void write_line_plot(const std::filesystem::path& png, const PlotSpec& spec, const std::vector<PlotSeries>& series) {
  std::vector<std::vector<PLFLT>> xs(series.size()), ys(series.size());
  double x_min = std::numeric_limits<double>::infinity(), x_max = -x_min, y_min = x_min, y_max = -x_min;
  for (size_t s = 0; s < series.size(); ++s)
    for (size_t i = 0; i < std::min(series[s].x.size(), series[s].y.size()); ++i) {
      if (!drawable(series[s].x[i], series[s].y[i], spec)) continue;
      xs[s].push_back(axis_value(series[s].x[i], spec.log_x));
      ys[s].push_back(axis_value(series[s].y[i], spec.log_y));
      x_min = std::min(x_min, xs[s].back());
      x_max = std::max(x_max, xs[s].back());
      y_min = std::min(y_min, ys[s].back());
      y_max = std::max(y_max, ys[s].back());
    }
  if (!std::isfinite(x_min)) fail("{}: no drawable points", png.string());
  // Pad the ranges so that lines do not sit on the frame.
  const double x_pad = std::max((x_max - x_min) * 0.03, 1e-9), y_pad = std::max((y_max - y_min) * 0.08, 1e-9);

  std::lock_guard<std::mutex> lock(plot_mutex);
  if (!has_png_driver())
    fail("{}: PLplot has no pngcairo driver (install the Debian package plplot-driver-cairo)", png.string());
  write_file_atomically(png, [&](const std::filesystem::path& temp) {
    PLINT previous_stream = 0, stream = 0;
    plgstrm(&previous_stream);
    plmkstrm(&stream);
    if (stream < 0) fail("{}: PLplot cannot open a new stream", png.string());
    plsdev("pngcairo");
    plsfnam(temp.c_str());
    plspage(0, 0, spec.width, spec.height, 0, 0);
    plscolbg(255, 255, 255);
    plinit();
    plcol0(15);  // black on white for frame and labels
    plscol0(15, 0, 0, 0);
    plcol0(15);
    plenv(x_min - x_pad, x_max + x_pad, y_min - y_pad, y_max + y_pad, 0,
          (spec.log_x ? 10 : 0) + (spec.log_y ? 20 : 0) + 2);  // 2: grid lines
    pllab(spec.x_label.c_str(), spec.y_label.c_str(), spec.title.c_str());
    static constexpr PLINT kColors[] = {1, 3, 9, 4, 8, 10, 12, 13};
    std::vector<PLINT> options, colors, styles;
    std::vector<PLFLT> widths;
    std::vector<const char*> names;
    for (size_t s = 0; s < series.size(); ++s) {
      const PLINT color = kColors[s % std::size(kColors)];
      plcol0(color);
      plwidth(2.0);
      if (xs[s].size() > 1) plline(static_cast<PLINT>(xs[s].size()), xs[s].data(), ys[s].data());
      if (!xs[s].empty()) plpoin(static_cast<PLINT>(xs[s].size()), xs[s].data(), ys[s].data(), 17);
      options.push_back(PL_LEGEND_LINE);
      colors.push_back(color);
      styles.push_back(1);
      widths.push_back(2.0);
      names.push_back(series[s].name.c_str());
    }
    plwidth(1.0);
    plcol0(15);
    PLFLT legend_width = 0, legend_height = 0;
    const auto n = static_cast<PLINT>(series.size());
    std::vector<PLINT> text_colors(series.size(), 15);
    pllegend(&legend_width, &legend_height, PL_LEGEND_BACKGROUND, PL_POSITION_LEFT | PL_POSITION_TOP | PL_POSITION_INSIDE,
             0.02, 0.02, 0.08, 0, 15, 1, 0, 0, n, options.data(), 1.0, 1.0, 1.5, 0.0, text_colors.data(), names.data(),
             nullptr, nullptr, nullptr, nullptr, colors.data(), styles.data(), widths.data(), nullptr, nullptr,
             nullptr, nullptr);
    plend1();
    plsstrm(previous_stream);
  });
}

}  // namespace dj
