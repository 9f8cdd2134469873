# Reference fits of the mixed-model engine's validation cases with lme4 + lmerTest.
#
#   apt-get install -y r-base-core r-cran-lme4 r-cran-lmertest
#   .venv/bin/python scripts/lmm_fixture_data.py        # small data sets -> tests/fixtures/lmm/data
#   Rscript scripts/lme4_fixtures.R                      # -> tests/fixtures/lmm/<case>.json
#
# Run from the repository root.  CI never runs this: the JSON files are committed.
# Each case is fitted twice: with lme4's defaults (lmerControl(): nloptwrap/BOBYQA), whose
# criterion and theta are stored as *_default (the engine must reach a criterion no worse), and
# with tight optimiser tolerances, whose estimates are the reference values the parameters are
# compared with (lme4's default stopping rule leaves ~1e-7 of criterion on the table in the
# random-slope HSB fits, enough to move theta by ~2e-4 relative).  Satterthwaite df come from
# lmerTest::lmer on the same calls.  Categorical predictors get the level order the Python
# package declares (first level = reference).
suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
})

out_dir <- file.path("tests", "fixtures", "lmm")
data_dir <- file.path(out_dir, "data")

num <- function(x) {
  x <- as.numeric(x)
  s <- ifelse(is.na(x), "null", sprintf("%.17g", x))
  paste0("[", paste(s, collapse = ", "), "]")
}
str_vec <- function(x) paste0("[", paste0('"', x, '"', collapse = ", "), "]")
mat <- function(m) paste0("[", paste(apply(m, 1, num), collapse = ", "), "]")

hsb <- function() {
  st <- read.csv(file.path("mlsimkit", "datasets", "hsb", "students.csv"), stringsAsFactors = FALSE)
  sc <- read.csv(file.path("mlsimkit", "datasets", "hsb", "schools.csv"), stringsAsFactors = FALSE)
  d <- merge(st, sc, by = "School")
  d$School <- as.character(d$School)
  d$Sector <- factor(d$Sector, levels = c("Public", "Catholic"))
  d$Minority <- factor(d$Minority, levels = c("No", "Yes"))
  d$Sex <- factor(d$Sex, levels = c("Male", "Female"))
  d
}

small <- function(name) {
  d <- read.csv(file.path(data_dir, paste0(name, ".csv")), stringsAsFactors = FALSE)
  if ("School" %in% names(d)) d$School <- as.character(d$School)
  if ("Sector" %in% names(d)) d$Sector <- factor(d$Sector, levels = c("Public", "Catholic"))
  d
}

cases <- list(
  list(name = "hsb_ri_reml", data = "hsb", formula = "MathAch ~ SES + (1 | School)", reml = TRUE),
  list(name = "hsb_ri_ml", data = "hsb", formula = "MathAch ~ SES + (1 | School)", reml = FALSE),
  list(name = "hsb_rs_reml", data = "hsb", formula = "MathAch ~ SES + Sector + (1 + SES | School)", reml = TRUE),
  list(name = "hsb_rs_ml", data = "hsb", formula = "MathAch ~ SES + Sector + (1 + SES | School)", reml = FALSE),
  list(name = "hsb_cat_reml", data = "hsb", formula = "MathAch ~ SES * Sector + Minority + Sex + MEANSES + (1 | School)", reml = TRUE),
  list(name = "hsb10_ri_reml", data = "hsb10", formula = "MathAch ~ SES + MEANSES + Sector + (1 | School)", reml = TRUE),
  list(name = "hsb10_rs_reml", data = "hsb10", formula = "MathAch ~ SES + (1 + SES | School)", reml = TRUE),
  list(name = "lowicc_ri_reml", data = "lowicc", formula = "y ~ x + w + (1 | g)", reml = TRUE),
  list(name = "lowicc_ri_ml", data = "lowicc", formula = "y ~ x + w + (1 | g)", reml = FALSE),
  list(name = "singular_ri_reml", data = "singular_ri", formula = "y ~ x + (1 | g)", reml = TRUE),
  list(name = "singular_rs_reml", data = "singular_rs", formula = "y ~ x + (1 + x | g)", reml = TRUE),
  list(name = "unbalanced_rs_ml", data = "unbalanced", formula = "y ~ x + z + (1 + x | g)", reml = FALSE),
  list(name = "unbalanced_rs_reml", data = "unbalanced", formula = "y ~ x + z + (1 + x | g)", reml = TRUE),
  list(name = "q3_rs_reml", data = "q3", formula = "y ~ x1 + x2 + (1 + x1 + x2 | g)", reml = TRUE)
)

for (cs in cases) {
  d <- if (cs$data == "hsb") hsb() else small(cs$data)
  f <- as.formula(cs$formula)
  fit0 <- lmerTest::lmer(f, data = d, REML = cs$reml)
  tight <- lmerControl(optimizer = "nloptwrap", optCtrl = list(ftol_abs = 1e-15, ftol_rel = 1e-15,
                                                              xtol_abs = 1e-13, xtol_rel = 1e-13, maxeval = 1e5))
  fit <- lmerTest::lmer(f, data = d, REML = cs$reml, control = tight)
  critf <- function(ft) {
    cmp <- getME(ft, "devcomp")$cmp
    if (cs$reml) cmp[["REML"]] else cmp[["dev"]]
  }
  crit <- critf(fit)
  co <- summary(fit)$coefficients
  re <- ranef(fit)[[1]]
  vc <- VarCorr(fit)[[1]]
  attributes(vc)[c("stddev", "correlation")] <- NULL
  msgs <- c(fit@optinfo$conv$lme4$messages, fit@optinfo$warnings)
  js <- paste0(
    "{\n",
    '  "name": "', cs$name, '",\n',
    '  "data": "', cs$data, '",\n',
    '  "formula": "', cs$formula, '",\n',
    '  "reml": ', tolower(as.character(cs$reml)), ",\n",
    '  "lme4_version": "', as.character(packageVersion("lme4")), '",\n',
    '  "lmerTest_version": "', as.character(packageVersion("lmerTest")), '",\n',
    '  "nobs": ', nobs(fit), ",\n",
    '  "ngroups": ', nrow(re), ",\n",
    '  "theta": ', num(getME(fit, "theta")), ",\n",
    '  "fe_names": ', str_vec(rownames(co)), ",\n",
    '  "beta": ', num(fixef(fit)), ",\n",
    '  "se": ', num(co[, "Std. Error"]), ",\n",
    '  "df": ', num(co[, "df"]), ",\n",
    '  "sigma2": ', num(sigma(fit)^2), ",\n",
    '  "cov_re": ', mat(as.matrix(vc)), ",\n",
    '  "criterion": ', num(crit), ",\n",
    '  "criterion_default": ', num(critf(fit0)), ",\n",
    '  "theta_default": ', num(getME(fit0, "theta")), ",\n",
    '  "loglik": ', num(as.numeric(logLik(fit))), ",\n",
    '  "singular": ', tolower(as.character(isSingular(fit))), ",\n",
    '  "messages": ', if (length(msgs)) str_vec(gsub('"', "'", msgs)) else "[]", ",\n",
    '  "ranef_groups": ', str_vec(rownames(re)), ",\n",
    '  "ranef": ', mat(as.matrix(re)), "\n",
    "}\n"
  )
  writeLines(js, file.path(out_dir, paste0(cs$name, ".json")), sep = "")
  cat(cs$name, "criterion", sprintf("%.9f", crit), "default", sprintf("%.9f", critf(fit0)), "singular", isSingular(fit), "\n")
}
